-- The database side of dumper: a login role that can read everything and write
-- nothing, logging in with RDS IAM tokens. Idempotent: run it again at will.
-- No superuser rights are needed by the dumper itself.
--
--   psql "host=<endpoint> dbname=<db> user=<admin>" -v role=dumper -f sql/dumper_role.sql
--
-- Run it in every database you dump (CONNECT and the older-version grants are
-- per database). On RDS/Aurora run it as the master user (rds_superuser).
\set ON_ERROR_STOP on
\if :{?role}
\else
  \set role dumper
\endif

-- 1. The login role (no password: it logs in with IAM tokens only).
SELECT format('CREATE ROLE %I LOGIN', :'role')
WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = :'role') \gexec

-- 2. IAM authentication: on RDS/Aurora, membership in rds_iam switches the role
--    from passwords to IAM tokens (rds_iam exists only there).
SELECT format('GRANT rds_iam TO %I', :'role')
WHERE EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'rds_iam') \gexec

-- 3. Connect to this database.
SELECT format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), :'role') \gexec

-- 4a. PostgreSQL 14+: read every table, view and sequence, now and later.
SELECT format('GRANT pg_read_all_data TO %I', :'role')
WHERE current_setting('server_version_num')::int >= 140000 \gexec

-- 4b. Older versions: SELECT on what exists, and on what the schema owners create later.
SELECT format('GRANT USAGE ON SCHEMA %1$I TO %2$I; '
              'GRANT SELECT ON ALL TABLES IN SCHEMA %1$I TO %2$I; '
              'ALTER DEFAULT PRIVILEGES FOR ROLE %3$I IN SCHEMA %1$I GRANT SELECT ON TABLES TO %2$I',
              n.nspname, :'role', pg_catalog.pg_get_userbyid(n.nspowner))
FROM pg_catalog.pg_namespace n
WHERE current_setting('server_version_num')::int < 140000
  AND n.nspname NOT LIKE 'pg\_%' AND n.nspname <> 'information_schema' \gexec

-- 5. Belt and braces: every session of the role is read-only by default.
SELECT format('ALTER ROLE %I SET default_transaction_read_only = on', :'role') \gexec

-- Row-level security: dumper turns row_security off and FAILS on a table whose
-- rows a policy would hide (it never writes a silently short file). Either give
-- the role BYPASSRLS (needs a superuser; on RDS ask AWS support or use the
-- table owner), or add permissive policies for it on those tables, e.g.
--   CREATE POLICY dumper_reads_all ON app.accounts FOR SELECT TO dumper USING (true);
-- `dumper check` lists every table it could not read.
