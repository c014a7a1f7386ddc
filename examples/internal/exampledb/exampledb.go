// Package exampledb opens the database of the examples: gorm on the server
// named by $DBLOCK_DSN, with txlock's lock table migrated. It only uses
// txlock's public API (the migrations package), like the examples.
package exampledb

import (
	"context"
	"database/sql"
	"fmt"
	"os"

	gomysql "github.com/go-sql-driver/mysql"
	"gorm.io/driver/mysql"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/txlock/txlock/migrations"
)

// EnvDSN is the environment variable that names the examples' server.
const EnvDSN = "DBLOCK_DSN"

// DefaultDSN is the server when $DBLOCK_DSN is not set.
const DefaultDSN = "root@tcp(127.0.0.1:3306)/test"

// DSN returns $DBLOCK_DSN, or DefaultDSN when it is not set.
func DSN() string {
	if dsn := os.Getenv(EnvDSN); dsn != "" {
		return dsn
	}
	return DefaultDSN
}

// Open opens gorm on dsn, with parseTime and a silent logger.
func Open(dsn string) (*gorm.DB, error) {
	cfg, err := gomysql.ParseDSN(dsn)
	if err != nil {
		return nil, fmt.Errorf("parsing the DSN: %w", err)
	}
	cfg.ParseTime = true
	db, err := gorm.Open(mysql.New(mysql.Config{DSNConfig: cfg}), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		return nil, fmt.Errorf("opening the database: %w", err)
	}
	return db, nil
}

// OpenMigrated opens gorm on dsn and applies txlock's migrations to
// lockTable (migrations.Up). It returns gorm and its pool, which the caller
// closes.
func OpenMigrated(ctx context.Context, dsn, lockTable string) (*gorm.DB, *sql.DB, error) {
	db, err := Open(dsn)
	if err != nil {
		return nil, nil, err
	}
	sqlDB, err := db.DB()
	if err != nil {
		return nil, nil, err
	}
	if _, err := migrations.Up(ctx, sqlDB, migrations.Table(lockTable)); err != nil {
		_ = sqlDB.Close()
		return nil, nil, err
	}
	return db, sqlDB, nil
}
