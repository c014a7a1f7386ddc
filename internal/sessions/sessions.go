// Package sessions holds the statements on the session table
// (schema.SessionTable) that the library and the CLI share: the labels of
// server connections, with the rows of a past server run left out.
package sessions

import (
	"context"
	"database/sql"
	"errors"
	"slices"
	"strings"

	"github.com/go-sql-driver/mysql"
)

// ServerStart is an expression for the server's start in UTC:
// UTC_TIMESTAMP(6) minus the Uptime status. Uptime counts whole seconds,
// so it is up to a second after the real start: a row written before the
// start is always before it (a row of a past run is never taken for one
// of this run), and one written in the run's first second may be too.
// Labels, for which showing one is worth that second of doubt, use
// LabelsSince.
func ServerStart(mariaDB bool) string {
	status := "performance_schema.global_status" // MySQL 8 has no information_schema.GLOBAL_STATUS
	if mariaDB {
		status = "information_schema.GLOBAL_STATUS"
	}
	return "UTC_TIMESTAMP(6) - INTERVAL (SELECT VARIABLE_VALUE FROM " + status + " WHERE VARIABLE_NAME = 'Uptime') SECOND"
}

// LabelsSince is the bound on a label row's seen: ServerStart a second
// earlier, so that the labels written in the run's first second count
// (and a row written in the last second before a restart that took less
// than a second, which restarts do not, would too).
func LabelsSince(mariaDB bool) string {
	return ServerStart(mariaDB) + " - INTERVAL 1 SECOND"
}

// LabelsSQL selects conn_id and label of the n connections given as
// parameters, from the rows written during the server's current run.
func LabelsSQL(sessionTable string, mariaDB bool, n int) string {
	return "SELECT conn_id, label FROM `" + sessionTable + "` WHERE conn_id IN (" +
		strings.TrimSuffix(strings.Repeat("?, ", n), ", ") + ") AND seen >= " + LabelsSince(mariaDB)
}

// A Queryer runs a query: *sql.DB, *sql.Conn, *sql.Tx.
type Queryer interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// Labels returns the labels of the connections ids that have a row of the
// server's current run in sessionTable. A missing table is an error that
// Missing recognises.
func Labels(ctx context.Context, q Queryer, sessionTable string, mariaDB bool, ids []int64) (map[int64]string, error) {
	out := make(map[int64]string, len(ids))
	for chunk := range slices.Chunk(ids, 500) {
		args := make([]any, len(chunk))
		for i, id := range chunk {
			args[i] = id
		}
		rows, err := q.QueryContext(ctx, LabelsSQL(sessionTable, mariaDB, len(chunk)), args...)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var id int64
			var label string
			if err := rows.Scan(&id, &label); err != nil {
				rows.Close()
				return nil, err
			}
			out[id] = label
		}
		if err := rows.Close(); err != nil {
			return nil, err
		}
		if err := rows.Err(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// Missing reports whether err says the table does not exist (1146): the
// schema is at version 1, before the session table.
func Missing(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && me.Number == 1146
}
