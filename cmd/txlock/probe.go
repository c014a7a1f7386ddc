package main

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"

	"github.com/txlock/txlock/dblock"
)

// probeBatch is how many key rows one probe statement locks.
const probeBatch = 500

// probeHeld returns the ids of the key rows matching filter that another
// transaction holds: a READ COMMITTED transaction locks the free ones with
// FOR UPDATE SKIP LOCKED and rolls back at once, batch by batch; the rows
// it skips are held.
func (in *inspector) probeHeld(ctx context.Context, filter dblock.Key) ([]int64, error) {
	cond, fargs := filterSQL(filter)
	var held []int64
	var after int64
	for {
		ids, err := queryIDs(ctx, in.db, "SELECT id FROM `"+in.table+"` WHERE id > ?"+cond+" ORDER BY id LIMIT "+strconv.Itoa(probeBatch),
			append([]any{after}, fargs...)...)
		if err != nil {
			return nil, fmt.Errorf("probing %s: %w", in.table, err)
		}
		if len(ids) == 0 {
			return held, nil
		}
		free, err := in.lockFree(ctx, ids)
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

// lockFree locks ids with SKIP LOCKED in a transaction that it rolls back,
// and returns those it could lock.
func (in *inspector) lockFree(ctx context.Context, ids []int64) (map[int64]bool, error) {
	tx, err := in.db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelReadCommitted})
	if err != nil {
		return nil, fmt.Errorf("probing %s: %w", in.table, err)
	}
	defer tx.Rollback()
	rows, err := tx.QueryContext(ctx, "SELECT id FROM `"+in.table+"` WHERE id IN ("+placeholders(len(ids))+") FOR UPDATE SKIP LOCKED", args(ids)...)
	if err != nil {
		return nil, fmt.Errorf("probing %s: %w", in.table, err)
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
