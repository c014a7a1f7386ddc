-- txlock: the tables of scheduled runs, elections and holder labels.
--
-- Plain SQL accepted by MySQL >= 8.0 and MariaDB >= 10.6, in goose format,
-- idempotent like 00001 (CREATE TABLE IF NOT EXISTS, DROP TABLE IF EXISTS).
--
-- tb_lock_run: the last committed run of a key locked with MinInterval, one
-- row per key, identified by tb_lock.key_hash. The row is written in the
-- holder's own transaction, so a run whose writes rolled back leaves no
-- trace, and the time is the server's (NOW(6)), never a client's clock.
--   last_run   when the last committed run took the lock (server time)
--   runs       how many runs committed
--
-- tb_lock_leader: the value of the leader of an election, one row per key.
-- A leadership is a server named lock (GET_LOCK) held by the leader's
-- connection; once granted, the leader writes this row in autocommit. The
-- row is the live leader's only while conn_id holds the named lock
-- (conn_id = IS_USED_LOCK(name)): a resigned or dead leader's row stays
-- and no longer matches. A row is replaced only by a greater token.
--   value      what the leader campaigned with
--   token      the leadership's fencing token (tb_lock_fence.token)
--   conn_id    CONNECTION_ID() of the session that holds the named lock
--   since      when the leadership began (server time, UTC)
--
-- tb_lock_session: the label of each connection that txlock locks on, one
-- row per server connection id, written in autocommit when a Locker first
-- uses the connection, so that Holder and `txlock locks` can say which
-- instance holds a key. Connection ids restart with the server: a row whose
-- seen is before the server's start belongs to a past run and is ignored.
--   conn_id    CONNECTION_ID() of the connection
--   label      the Locker's Label (host name and pid by default)
--   seen       when the Locker first used the connection (server time)

-- +goose Up
CREATE TABLE IF NOT EXISTS `tb_lock_run` (
  key_hash   BINARY(32)      NOT NULL COMMENT 'tb_lock.key_hash of the key',
  last_run   DATETIME(6)     NOT NULL COMMENT 'server time of the last committed run',
  runs       BIGINT UNSIGNED NOT NULL DEFAULT 0,
  PRIMARY KEY (key_hash)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS `tb_lock_leader` (
  key_hash   BINARY(32)      NOT NULL COMMENT 'tb_lock.key_hash of the election key',
  value      VARCHAR(1024)   NOT NULL DEFAULT '',
  token      BIGINT UNSIGNED NOT NULL DEFAULT 0,
  conn_id    BIGINT UNSIGNED NOT NULL DEFAULT 0 COMMENT 'CONNECTION_ID() of the leader session (IS_USED_LOCK)',
  since      DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6) COMMENT 'UTC',
  PRIMARY KEY (key_hash)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS `tb_lock_session` (
  conn_id    BIGINT UNSIGNED NOT NULL COMMENT 'CONNECTION_ID() of the connection',
  label      VARCHAR(255)    NOT NULL DEFAULT '',
  seen       DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  PRIMARY KEY (conn_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- +goose Down
-- The lock table's exclusive metadata lock first, with a change that
-- changes nothing: while a transaction holds a key this fails after
-- migrations.Down's short lock wait, before anything is dropped.
ALTER TABLE `tb_lock` COMMENT = '';
DROP TABLE IF EXISTS `tb_lock_session`, `tb_lock_leader`, `tb_lock_run`;
