package main

import (
	"context"
	"database/sql"

	"github.com/txlock/txlock/migrations"
	"github.com/txlock/txlock/schema"
)

// hierarchy checks migration 4's hierarchy column, which every locking
// read selects, on the lock table and its permit table, and shows the
// table's setting (docs/MODES.md, "txlock hierarchy").
func (cs *checks) hierarchy(ctx context.Context, db *sql.DB, table string) {
	tables := []string{table, schema.PermitTable(table)}
	has := map[string]bool{}
	err := scanRows(ctx, db, `SELECT table_name FROM information_schema.columns
		WHERE table_schema = DATABASE() AND table_name IN (?, ?) AND column_name = 'hierarchy'`, args(tables), func(rows *sql.Rows) error {
		var name string
		err := rows.Scan(&name)
		has[name] = true
		return err
	})
	if err != nil {
		cs.add("hierarchy", statusFail, "cannot look up the hierarchy column: "+err.Error(), "")
		return
	}
	var missing []string
	for _, t := range tables {
		if !has[t] {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		cs.add("hierarchy", statusFail, listed(missing)+": no hierarchy column (migration 4 is not applied); every acquisition reads it, and fails",
			"txlock migrate up --table "+table)
		return
	}
	on, err := migrations.Hierarchy(ctx, db, migrations.Table(table))
	switch {
	case err != nil:
		cs.add("hierarchy", statusFail, err.Error(), "") // it says what to run
	case on:
		cs.add("hierarchy", statusOK, "on: the global key contains every key, and a single-field key the composite keys that set its field (an acquisition also takes its containers, shared)", "")
	default:
		cs.add("hierarchy", statusOK, "off: keys are independent of each other (txlock hierarchy on makes the global and single-field keys contain the others)", "")
	}
}
