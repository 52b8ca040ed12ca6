"""PostgreSQL: the database, migrations, the commit pipeline, and one module per table
family holding all of its SQL."""
