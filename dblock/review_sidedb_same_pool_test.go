package dblock_test

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"gorm.io/driver/mysql"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/txlock/txlock/dblock"
)

// New requires SideDB for a gorm handle opened on an existing *sql.DB, and
// checks only that the pool runs in autocommit. A caller who passes the
// very pool the handle was opened on (SideDB(sqlDB): "it wants a *sql.DB,
// here is mine") is back at issue 14 item 8: two holders on a pool of 2,
// each creating a new key's row inside its lock, wait for each other's
// connection forever (no deadline on the context, no WaitTimeout). New
// should refuse a SideDB that is the handle's own pool, naming the
// problem, as it refuses a missing one.
func TestReviewSideDBSamePoolHangs(t *testing.T) {
	e := setup(t)
	sqlDB := e.sqlDB
	db, err := gorm.Open(mysql.New(mysql.Config{Conn: sqlDB}), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		t.Fatal(err)
	}
	l, err := dblock.New(db, dblock.Table(e.table), dblock.SideDB(sqlDB))
	if err != nil {
		t.Logf("New refused SideDB on the handle's own pool: %v", err)
		return
	}
	defer l.Close()
	sqlDB.SetMaxOpenConns(2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	inside := make(chan struct{}, 2)
	for g := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- l.Do(ctx, dblock.Resource("outer"+strconv.Itoa(g)), func(ctx context.Context, _ *gorm.DB) error {
				inside <- struct{}{}
				for len(inside) < 2 && ctx.Err() == nil {
					time.Sleep(time.Millisecond)
				}
				return l.Do(ctx, dblock.Resource("new"+strconv.Itoa(g)), func(context.Context, *gorm.DB) error { return nil })
			})
		}()
	}
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(opTimeout):
		t.Errorf("New accepted SideDB(the handle's own pool), and two holders on a pool of 2 creating new keys' rows are still blocked after %v (no deadline: forever)", opTimeout)
		cancel()
		<-finished
	}
	close(errs)
	for err := range errs {
		t.Logf("Do: %v", err)
	}
}
