package main

import (
	"context"
	"fmt"
	"time"
)

// cacheQuiet is how long to leave MariaDB's INNODB_* cache unread so that
// the next read refreshes it: the server refreshes the cache only when it
// has not been read for 100 ms.
const cacheQuiet = 150 * time.Millisecond

// cacheFreshWait bounds how long readCache waits for a fill of MariaDB's
// INNODB_* cache made after it began.
const cacheFreshWait = time.Second

// cacheRead is the lock view and INNODB_TRX, read back to back: on MariaDB
// they then come from one fill of the server's cache.
type cacheRead struct {
	entries []lockEntry
	trxs    map[string]trxInfo
	// fresh: the fill was made after readCache began (MariaDB), or the
	// views are live (MySQL's data_locks).
	fresh bool
}

// readCache reads the lock view and INNODB_TRX. On MariaDB it first opens a
// marker transaction (a consistent snapshot, which locks nothing), and reads
// again every cacheQuiet, for up to cacheFreshWait, until a fill shows the
// marker: that fill was made after readCache began. If none does (other
// clients read the cache more often than every 100 ms), the last read is
// returned with fresh false.
func (in *inspector) readCache(ctx context.Context) (c cacheRead, err error) {
	if !in.srv.MariaDB {
		c.fresh = true
		if c.entries, err = in.entries(ctx); err == nil {
			c.trxs, err = in.transactions(ctx)
		}
		return c, err
	}
	marker, markerID, err := ownSession(ctx, in.db)
	if err != nil {
		return c, fmt.Errorf("reading the INNODB_* cache: %w", err)
	}
	defer discardOnFailedRollback(ctx, marker)
	if _, err := marker.ExecContext(ctx, "START TRANSACTION WITH CONSISTENT SNAPSHOT"); err != nil {
		return c, fmt.Errorf("reading the INNODB_* cache: %w", err)
	}
	deadline := time.Now().Add(cacheFreshWait)
	for {
		if c.entries, err = in.entries(ctx); err != nil {
			return c, err
		}
		if c.trxs, err = in.transactions(ctx); err != nil {
			return c, err
		}
		for _, t := range c.trxs {
			c.fresh = c.fresh || t.conn == markerID
		}
		if c.fresh || !time.Now().Before(deadline) {
			return c, nil
		}
		select {
		case <-ctx.Done():
			return c, ctx.Err()
		case <-time.After(cacheQuiet):
		}
	}
}
