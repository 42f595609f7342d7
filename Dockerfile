# One image for setup, worker, beat, API and Flower (see docker-compose.yml).
FROM python:3.11-slim
WORKDIR /src
COPY . .
RUN pip install --no-cache-dir ".[server,flower]"
RUN useradd --create-home indexgate
# run from a folder without the sources, so the installed ``indexgate`` package is the one imported
WORKDIR /home/indexgate
USER indexgate
ENV INDEXGATE_DATA_DIR=/home/indexgate/data
CMD ["celery", "-A", "indexgate.workers", "worker", "--loglevel=INFO"]
