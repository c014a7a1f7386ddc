package main

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/sessions"
)

// probeBatch is how many rows one probe statement locks.
const probeBatch = 500

// probeHeld returns the ids of the key rows matching filter that another
// transaction holds: a READ COMMITTED transaction locks the free ones with
// FOR UPDATE SKIP LOCKED and rolls back at once, batch by batch; the rows
// it skips are held.
func (in *inspector) probeHeld(ctx context.Context, filter dblock.Key) ([]int64, error) {
	cond, fargs := filterSQL(filter)
	return in.probeTable(ctx, in.table, "SELECT id FROM `"+in.table+"` WHERE id > ?"+cond, fargs)
}

// probePermits returns the ids of the permit rows of the keys matching
// filter that another transaction holds, as probeHeld does for key rows;
// missing reports that the permit table does not exist (a schema from
// before migration 3).
func (in *inspector) probePermits(ctx context.Context, filter dblock.Key) (held []int64, missing bool, err error) {
	pt := in.permitTable()
	q := "SELECT id FROM `" + pt + "` WHERE id > ?"
	cond, fargs := filterSQL(filter)
	if cond != "" {
		q += " AND key_hash IN (SELECT key_hash FROM `" + in.table + "` WHERE TRUE" + cond + ")"
	}
	held, err = in.probeTable(ctx, pt, q, fargs)
	if sessions.Missing(err) {
		return nil, true, nil
	}
	return held, false, err
}

// probeTable probes the rows of table that selectIDs (a SELECT of ids
// after its first parameter, then fargs) returns, in batches of
// probeBatch, and returns those held.
func (in *inspector) probeTable(ctx context.Context, table, selectIDs string, fargs []any) ([]int64, error) {
	var held []int64
	var after int64
	for {
		ids, err := queryIDs(ctx, in.db, selectIDs+" ORDER BY id LIMIT "+strconv.Itoa(probeBatch), append([]any{after}, fargs...)...)
		if err != nil {
			return nil, fmt.Errorf("probing %s: %w", table, err)
		}
		if len(ids) == 0 {
			return held, nil
		}
		free, err := in.lockFree(ctx, table, ids)
		if err != nil {
			return nil, err
		}
		for _, id := range ids {
			if !free[id] {
				held = append(held, id)
			}
		}
		after = ids[len(ids)-1]
	}
}

// lockFree locks the rows ids of table with SKIP LOCKED in a transaction
// that it rolls back, and returns those it could lock.
func (in *inspector) lockFree(ctx context.Context, table string, ids []int64) (map[int64]bool, error) {
	tx, err := in.db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
	if err != nil {
		return nil, fmt.Errorf("probing %s: %w", table, err)
	}
	defer tx.Rollback()
	rows, err := tx.QueryContext(ctx, "SELECT id FROM `"+table+"` WHERE id IN ("+placeholders(len(ids))+") FOR UPDATE SKIP LOCKED", args(ids)...)
	if err != nil {
		return nil, fmt.Errorf("probing %s: %w", table, err)
	}
	free := map[int64]bool{}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, err
		}
		free[id] = true
	}
	if err := rows.Close(); err != nil {
		return nil, err
	}
	return free, rows.Err()
}
