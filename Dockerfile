# One image for setup, worker, beat, API and Flower (see docker-compose.yml).
FROM python:3.11-slim
WORKDIR /src
COPY . .
RUN pip install --no-cache-dir ".[server,flower]"
RUN useradd --create-home indexgate
# the worker's metrics folder and the API's read-only view of it (docker-compose's worker-metrics volume):
# a named volume copies the ownership of the image's folder, so the indexgate user can write there
RUN install -d -o indexgate /home/indexgate/metrics /home/indexgate/worker-metrics
# run from a folder without the sources, so the installed ``indexgate`` package is the one imported
WORKDIR /home/indexgate
USER indexgate
ENV INDEXGATE_DATA_DIR=/home/indexgate/data
CMD ["celery", "-A", "indexgate.workers", "worker", "--loglevel=INFO"]
