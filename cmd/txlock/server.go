package main

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/txlock/txlock/internal/serverinfo"
)

// serverInfo is what detectServer learned.
type serverInfo struct {
	serverinfo.Version
	DB string // DATABASE()
}

// detectServer asks the server for its version, flavour and database.
func detectServer(ctx context.Context, db *sql.DB) (serverInfo, error) {
	var version, comment string
	var dbName sql.NullString
	if err := db.QueryRowContext(ctx, "SELECT VERSION(), @@version_comment, DATABASE()").Scan(&version, &comment, &dbName); err != nil {
		return serverInfo{}, fmt.Errorf("detecting the server: %w", err)
	}
	v, err := serverinfo.Identify(version, comment)
	return serverInfo{Version: v, DB: dbName.String}, err
}
