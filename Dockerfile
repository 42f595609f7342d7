# One image for worker, beat and flower (see docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md beat_schedule.py ./
COPY indexgate ./indexgate
COPY schemas ./schemas
COPY events ./events
COPY workers ./workers
RUN pip install --no-cache-dir ".[flower]"
RUN useradd --create-home indexgate
USER indexgate
ENV INDEXGATE_DATA_DIR=/home/indexgate/data
CMD ["celery", "-A", "workers", "worker", "--loglevel=INFO"]
