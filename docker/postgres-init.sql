-- A separate database for the recommendations, next to Airflow's metadata database.
CREATE DATABASE recjobs OWNER airflow;
