-- txlock: the lock table's hierarchy setting (docs/MODES.md, "Granularities
-- that contain each other").
--
-- Plain SQL accepted by MySQL >= 8.0 and MariaDB >= 10.6, in goose format,
-- idempotent like 00001: the column is added only when missing (MySQL has
-- no ADD COLUMN IF NOT EXISTS), through a prepared statement.
--
-- tb_lock.hierarchy: 1 when the table's keys contain each other (an
-- acquisition also takes, shared, the global key and each single-field
-- key of a composite key), 0 when not. Every row carries the table's
-- setting and every locking read returns it, so that a Locker that assumed
-- the other setting finds out at its next acquisition, at no cost. The
-- column's default is the setting of the rows created from now on. Change
-- it only with `txlock hierarchy on|off` (migrations.SetHierarchy), which
-- changes the default, then every row, in an order that never lets a
-- holder of one setting overlap a holder of the other.

-- +goose Up
SET @txlock_sql = (SELECT IF(COUNT(*) = 0,
    'ALTER TABLE `tb_lock` ADD COLUMN hierarchy TINYINT(1) NOT NULL DEFAULT 0 COMMENT ''1: keys contain each other (txlock hierarchy on)''',
    'DO 0')
  FROM information_schema.COLUMNS
  WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'tb_lock' AND COLUMN_NAME = 'hierarchy');
PREPARE txlock_stmt FROM @txlock_sql;
EXECUTE txlock_stmt;
DEALLOCATE PREPARE txlock_stmt;

-- +goose Down
-- The permit table's exclusive metadata lock first, with a change that
-- changes nothing: a transaction that holds only a permit does not use the
-- lock table, and would otherwise let the column go before migration 3's
-- Down gives up on it.
ALTER TABLE `tb_lock_permit` COMMENT = '';
SET @txlock_sql = (SELECT IF(COUNT(*) = 1,
    'ALTER TABLE `tb_lock` DROP COLUMN hierarchy',
    'DO 0')
  FROM information_schema.COLUMNS
  WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'tb_lock' AND COLUMN_NAME = 'hierarchy');
PREPARE txlock_stmt FROM @txlock_sql;
EXECUTE txlock_stmt;
DEALLOCATE PREPARE txlock_stmt;
