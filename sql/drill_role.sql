-- The drill's login role, on the SCRATCH instance a weekly `dumper drill` restores into
-- (never the production database): it may create databases, nothing else, and logs in
-- with RDS IAM tokens. Idempotent.
--
--   psql "host=<scratch endpoint> dbname=postgres user=<admin>" -v role=dumper_drill \
--        -f sql/drill_role.sql
\set ON_ERROR_STOP on
SET search_path = '';
\if :{?role}
\else
  \set role dumper_drill
\endif

SELECT pg_catalog.format('CREATE ROLE %I LOGIN CREATEDB', :'role')
WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) :'role') \gexec
SELECT pg_catalog.format('ALTER ROLE %I LOGIN CREATEDB NOSUPERUSER NOCREATEROLE', :'role') \gexec

-- IAM authentication (rds_iam exists only on RDS/Aurora).
SELECT pg_catalog.format('GRANT rds_iam TO %I', :'role')
WHERE EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'rds_iam') \gexec
