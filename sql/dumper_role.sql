-- The database side of dumper: a login role that can read the dumped schemas and
-- write nothing, logging in with RDS IAM tokens. Idempotent: run it again at will
-- (and again after adding a schema). No superuser rights are needed by the dumper.
--
--   psql "host=<endpoint> dbname=<db> user=<admin>" -v role=dumper -v schemas=public,sales \
--        -f sql/dumper_role.sql
--
-- Variables: role (default dumper); schemas, comma-separated (default public): the
-- role gets SELECT on the tables of these schemas only, now and (for tables their
-- owners create) later; read_all=on instead grants pg_read_all_data (PostgreSQL 14+),
-- which reads EVERY table, view and sequence of EVERY database of the cluster (PUBLIC
-- has CONNECT by default) and, on self-managed PostgreSQL, pg_authid's password hashes:
-- an opt-in, for clusters that hold nothing but the dumped database.
--
-- Run it in every database you dump (CONNECT and the grants are per database). On
-- RDS/Aurora run it as the master user (rds_superuser).
--
-- Safe to run as a superuser in a database where others may create objects: the
-- search_path is emptied first and every function and operator is named with its
-- schema, so nothing planted in public (a look-alike format() or =) runs as you.
\set ON_ERROR_STOP on
SET search_path = '';
\if :{?role}
\else
  \set role dumper
\endif
\if :{?schemas}
\else
  \set schemas public
\endif
\if :{?read_all}
\else
  \set read_all off
\endif

-- 1. The login role (no password: it logs in with IAM tokens only).
SELECT pg_catalog.format('CREATE ROLE %I LOGIN', :'role')
WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) :'role') \gexec

-- 2. IAM authentication: on RDS/Aurora, membership in rds_iam switches the role
--    from passwords to IAM tokens (rds_iam exists only there).
SELECT pg_catalog.format('GRANT rds_iam TO %I', :'role')
WHERE EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) 'rds_iam') \gexec

-- 3. Connect to this database.
SELECT pg_catalog.format('GRANT CONNECT ON DATABASE %I TO %I', pg_catalog.current_database(), :'role') \gexec

-- 4. The default: SELECT on the tables and sequences of the dumped schemas (a sequence's
--    position goes into the manifest; SELECT reads it, it cannot advance it), and on
--    those their owners create later. (Objects another role creates there need that
--    role's own ALTER DEFAULT PRIVILEGES, or a run of this script after they appear.)
SELECT pg_catalog.format('GRANT USAGE ON SCHEMA %1$I TO %2$I; '
                         'GRANT SELECT ON ALL TABLES IN SCHEMA %1$I TO %2$I; '
                         'GRANT SELECT ON ALL SEQUENCES IN SCHEMA %1$I TO %2$I; '
                         'ALTER DEFAULT PRIVILEGES FOR ROLE %3$I IN SCHEMA %1$I GRANT SELECT ON TABLES TO %2$I; '
                         'ALTER DEFAULT PRIVILEGES FOR ROLE %3$I IN SCHEMA %1$I GRANT SELECT ON SEQUENCES TO %2$I',
                         n.nspname, :'role', pg_catalog.pg_get_userbyid(n.nspowner))
FROM pg_catalog.pg_namespace n
WHERE n.nspname OPERATOR(pg_catalog.=) ANY (pg_catalog.string_to_array(:'schemas', ','))
  AND :'read_all' OPERATOR(pg_catalog.<>) 'on' \gexec

-- 4'. Opt-in (read_all=on, PostgreSQL 14+): read everything, now and later.
SELECT pg_catalog.format('GRANT pg_read_all_data TO %I', :'role')
WHERE :'read_all' OPERATOR(pg_catalog.=) 'on'
  AND pg_catalog.current_setting('server_version_num')::pg_catalog.int4 OPERATOR(pg_catalog.>=) 140000 \gexec

-- 5. Belt and braces: every session of the role is read-only by default.
SELECT pg_catalog.format('ALTER ROLE %I SET default_transaction_read_only = on', :'role') \gexec

-- Row-level security: dumper turns row_security off and FAILS on a table whose
-- rows a policy would hide (it never writes a silently short file). Either give
-- the role BYPASSRLS (needs a superuser; on RDS ask AWS support or use the
-- table owner), or add permissive policies for it on those tables, e.g.
--   CREATE POLICY dumper_reads_all ON app.accounts FOR SELECT TO dumper USING (true);
-- `dumper check` lists every table it could not read.
