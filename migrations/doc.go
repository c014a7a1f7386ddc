// Package migrations creates and drops txlock's tables from Go.
//
// The schema is versioned plain SQL, embedded in the binary (see [FS]) and
// written in goose format, so it can also be applied by goose or, taking
// the part between "-- +goose Up" and "-- +goose Down", by Flyway,
// golang-migrate or a DBA's own tooling.
//
// [Up] applies the pending versions, [Down] rolls all of them back and
// [Status] reports which are applied. They take a *sql.DB opened with
// github.com/go-sql-driver/mysql on MySQL >= 8.0 or MariaDB >= 10.6; from
// gorm, pass the result of gormDB.DB(). Applied versions are recorded in
// the table <name>_schema_version, where <name> is the lock table's name
// ([Table], default "tb_lock"), so several lock tables in one database
// keep independent histories. Concurrent Up or Down calls for the same
// table, from any number of processes, are serialised by a server-side
// named lock (GET_LOCK).
//
//	sqlDB, err := gormDB.DB()
//	if err != nil { ... }
//	if _, err := migrations.Up(ctx, sqlDB); err != nil { ... }
//
// MySQL and MariaDB commit DDL implicitly: if a version fails halfway, the
// statements before the failure stay applied and the version is not
// recorded; the error says which version failed. Every statement is
// idempotent (IF NOT EXISTS, IF EXISTS), so running Up again completes it,
// and Up re-creates the tables that are missing although the version table
// records them. Up and Down return a [Report] of what the call did.
package migrations
