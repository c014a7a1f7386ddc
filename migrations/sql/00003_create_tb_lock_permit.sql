-- txlock: the permits of counting semaphores (dblock.Permits).
--
-- Plain SQL accepted by MySQL >= 8.0 and MariaDB >= 10.6, in goose format,
-- idempotent like 00001.
--
-- tb_lock_permit: one row per permit of a key taken with Permits(n): slots
-- 0 to n-1, created in autocommit by the key's first user. A holder locks
-- one slot row (SELECT ... FOR UPDATE) in its transaction, as a lock locks
-- its key row, so at most n transactions hold a permit at once and a dead
-- holder's permit comes back with its connection. n is the key's: the
-- first user's Permits(n) is written into slot 0, and a later call that
-- asks for another n is refused (dblock.ErrPermits), so that two callers
-- can never hold more permits than the smaller n.
-- After the permits, the first user inserts a spacer (slot n, permits 0)
-- that no one locks: a waiter's SKIP LOCKED read of the key's held permits
-- locks the gap after the last one (REPEATABLE READ), and the spacer keeps
-- that gap short of the table's end, where new semaphores' rows go.
--   key_hash   tb_lock.key_hash of the key
--   slot       the permit's number, 0 to permits-1 (n: the spacer)
--   permits    the key's n (slot 0's is the key's)
--   hierarchy  the lock table's hierarchy setting, as on tb_lock (00004)

-- +goose Up
CREATE TABLE IF NOT EXISTS `tb_lock_permit` (
  id         BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  key_hash   BINARY(32)      NOT NULL COMMENT 'tb_lock.key_hash of the key',
  slot       INT UNSIGNED    NOT NULL COMMENT 'the permit, 0 to permits-1',
  permits    INT UNSIGNED    NOT NULL COMMENT 'the key''s number of permits (slot 0 decides)',
  hierarchy  TINYINT(1)      NOT NULL DEFAULT 0 COMMENT 'the lock table''s hierarchy setting (see 00004)',
  PRIMARY KEY (id),
  UNIQUE KEY `uk_key_slot` (key_hash, slot)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- +goose Down
-- The lock table's exclusive metadata lock first (see 00002), then the
-- permit table's: while a transaction holds a key or a permit this fails
-- after migrations.Down's short lock wait, before anything is dropped.
ALTER TABLE `tb_lock` COMMENT = '';
ALTER TABLE `tb_lock_permit` COMMENT = '';
DROP TABLE IF EXISTS `tb_lock_permit`;
