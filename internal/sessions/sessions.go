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

// ServerStart is an expression for the server's start in UTC, the time
// zone of the seen column: UTC_TIMESTAMP(6) minus the Uptime status (whole
// seconds, so up to a second short) minus one more second. A row seen
// after it was written during the server's current run, or in the last
// second of the previous one if the server restarted within a second (a
// restart takes longer); a row written in the run's first second is not
// left out.
func ServerStart(mariaDB bool) string {
	status := "performance_schema.global_status" // MySQL 8 has no information_schema.GLOBAL_STATUS
	if mariaDB {
		status = "information_schema.GLOBAL_STATUS"
	}
	return "UTC_TIMESTAMP(6) - INTERVAL (SELECT VARIABLE_VALUE FROM " + status + " WHERE VARIABLE_NAME = 'Uptime') + 1 SECOND"
}

// LabelsSQL selects conn_id and label of the n connections given as
// parameters, from the rows written during the server's current run.
func LabelsSQL(sessionTable string, mariaDB bool, n int) string {
	return "SELECT conn_id, label FROM `" + sessionTable + "` WHERE conn_id IN (" +
		strings.TrimSuffix(strings.Repeat("?, ", n), ", ") + ") AND seen >= " + ServerStart(mariaDB)
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
