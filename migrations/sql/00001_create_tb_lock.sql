-- txlock: the lock table and its fence table.
--
-- Plain SQL accepted by MySQL >= 8.0 and MariaDB >= 10.6, in goose format;
-- Flyway, golang-migrate and other tools can run the Up part as is. The Go
-- package github.com/txlock/txlock/migrations renames every identifier that
-- starts with the literal tb_lock when given another table name (it does so
-- in comments too, which is harmless).
--
-- tb_lock: one row per lock key. A lock is held by locking the row
-- (SELECT ... FOR UPDATE by id) inside a transaction; the row itself is not
-- updated while held.
--   id         surrogate key, used by every lock statement
--   key_hash   SHA-256 of the canonical key encoding: the unique identity of
--              the key, whatever the length of the fields below
--   resource   granularity columns, informational copies of the key's
--   operation  fields ('' when unset); the hash above identifies the key
--   method
--   user_id
--   is_global  1 for the single system-wide key
--   created_at when the row was first inserted
--   updated_at when the row last changed
--
-- tb_lock_fence: the fencing counter of a key (opt-in), one row per key,
-- identified by the same key_hash as tb_lock (not by tb_lock.id, so that a
-- key row collected and created again keeps its counter). token is bumped in
-- autocommit while the lock is held, so it survives the holder's rollback or
-- crash and increases strictly per key. Never delete these rows.
--
-- Every statement can run again on a database that already has its effect
-- (IF NOT EXISTS, IF EXISTS): a migration interrupted halfway, or tables
-- created by another tool from these files, are completed by running it
-- again, and migrations.Up runs the recorded versions again when a table
-- is missing. Later migrations must keep that property.
--
-- Down drops both tables in one statement: the server takes the metadata
-- locks of both before it drops either, so it drops both or, when a
-- transaction still uses one of them (a held lock), neither.

-- +goose Up
CREATE TABLE IF NOT EXISTS `tb_lock` (
  id         BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  key_hash   BINARY(32)      NOT NULL COMMENT 'SHA-256 of the canonical key encoding',
  resource   VARCHAR(255)    NOT NULL DEFAULT '',
  operation  VARCHAR(128)    NOT NULL DEFAULT '',
  method     VARCHAR(255)    NOT NULL DEFAULT '',
  user_id    VARCHAR(128)    NOT NULL DEFAULT '',
  is_global  TINYINT(1)      NOT NULL DEFAULT 0,
  created_at DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  updated_at DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
  PRIMARY KEY (id),
  UNIQUE KEY `uk_tb_lock_key_hash` (key_hash)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE IF NOT EXISTS `tb_lock_fence` (
  key_hash   BINARY(32)      NOT NULL COMMENT 'tb_lock.key_hash of the key',
  token      BIGINT UNSIGNED NOT NULL DEFAULT 0 COMMENT 'fencing counter, bumped in autocommit while the lock is held',
  updated_at DATETIME(6)     NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
  PRIMARY KEY (key_hash)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- +goose Down
DROP TABLE IF EXISTS `tb_lock_fence`, `tb_lock`;
