package dblock_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"gorm.io/driver/mysql"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/migrations"
)

// The examples run against the server named by $DBLOCK_DSN (the tests of
// this package set it to their test server), or else a local MySQL or
// MariaDB with root and a database named "test". They use the default lock
// table, tb_lock, and a small business table of their own.

func exampleDSN() string {
	if dsn := os.Getenv("DBLOCK_DSN"); dsn != "" {
		return dsn
	}
	return "root@tcp(127.0.0.1:3306)/test"
}

// exampleSetup opens gorm, migrates tb_lock, creates the examples'
// business table and returns a Locker, with a function that closes them.
func exampleSetup() (*gorm.DB, *dblock.Locker, func()) {
	ctx := context.Background()
	db, err := gorm.Open(mysql.Open(exampleDSN()), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		log.Fatal(err)
	}
	sqlDB, err := db.DB()
	if err != nil {
		log.Fatal(err)
	}
	if _, err := migrations.Up(ctx, sqlDB); err != nil {
		log.Fatal(err)
	}
	if err := db.Exec(`CREATE TABLE IF NOT EXISTS dblock_example_orders (
		id BIGINT NOT NULL PRIMARY KEY, status VARCHAR(16) NOT NULL)`).Error; err != nil {
		log.Fatal(err)
	}
	locker, err := dblock.New(db)
	if err != nil {
		log.Fatal(err)
	}
	return db, locker, func() { _ = locker.Close(); _ = sqlDB.Close() }
}

// orderStatus reads an order's status outside any transaction.
func orderStatus(db *gorm.DB, id int) string {
	var status string
	if err := db.Raw("SELECT status FROM dblock_example_orders WHERE id = ?", id).Row().Scan(&status); err != nil {
		log.Fatal(err)
	}
	return status
}

// The quick start: open gorm, create the lock table, and hold a key while
// writing through the lock's transaction. The write commits with the
// release.
func ExampleLocker_Do() {
	ctx := context.Background()
	db, err := gorm.Open(mysql.Open(exampleDSN()), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		log.Fatal(err)
	}
	sqlDB, _ := db.DB()
	defer sqlDB.Close()
	if _, err := migrations.Up(ctx, sqlDB); err != nil { // creates tb_lock
		log.Fatal(err)
	}
	locker, err := dblock.New(db)
	if err != nil {
		log.Fatal(err)
	}
	defer locker.Close()

	db.Exec("CREATE TABLE IF NOT EXISTS dblock_example_orders (id BIGINT NOT NULL PRIMARY KEY, status VARCHAR(16) NOT NULL)")
	err = locker.Do(ctx, dblock.Resource("order:42"), func(ctx context.Context, tx *gorm.DB) error {
		// Only one process at a time runs this for order 42.
		return tx.Exec("REPLACE INTO dblock_example_orders (id, status) VALUES (?, ?)", 42, "refunded").Error
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("order 42:", orderStatus(db, 42))
	// Output: order 42: refunded
}

// Readers take a key with Shared and hold it together; a writer (the
// default, exclusive mode) gets it only once every reader is gone. A
// transaction that holds a key shared cannot take it exclusively as well:
// ErrUpgrade (take it exclusively from the start).
func ExampleShared() {
	db, locker, closeAll := exampleSetup()
	defer closeAll()
	ctx := context.Background()
	key := dblock.Resource("order:7")
	if err := db.Exec("REPLACE INTO dblock_example_orders (id, status) VALUES (7, 'paid')").Error; err != nil {
		log.Fatal(err)
	}

	reader, err := locker.Lock(ctx, key, dblock.Shared())
	if err != nil {
		log.Fatal(err)
	}
	_, err = locker.TryLock(ctx, key)
	fmt.Println("writer beside a reader:", errors.Is(err, dblock.ErrNotAcquired))

	// Another reader holds the key at the same time.
	err = locker.Do(ctx, key, func(ctx context.Context, tx *gorm.DB) error {
		var status string
		if err := tx.Raw("SELECT status FROM dblock_example_orders WHERE id = 7").Row().Scan(&status); err != nil {
			return err
		}
		fmt.Println("second reader sees:", status)
		err := locker.Do(ctx, key, func(context.Context, *gorm.DB) error { return nil })
		fmt.Println("writing inside a read:", errors.Is(err, dblock.ErrUpgrade))
		return nil
	}, dblock.Shared())
	if err != nil {
		log.Fatal(err)
	}

	if err := reader.Commit(); err != nil {
		log.Fatal(err)
	}
	writer, err := locker.TryLock(ctx, key)
	fmt.Println("writer once the readers are gone:", err)
	_ = writer.Rollback()
	// Output:
	// writer beside a reader: true
	// second reader sees: paid
	// writing inside a read: true
	// writer once the readers are gone: <nil>
}

// Permits makes a key a counting semaphore: here at most two exports run
// at once, whatever the number of processes. The number is the key's: a
// call that asks for another gets ErrPermits.
func ExamplePermits() {
	_, locker, closeAll := exampleSetup()
	defer closeAll()
	ctx := context.Background()
	key := dblock.Operation("example-export")

	first, err := locker.Lock(ctx, key, dblock.Permits(2))
	if err != nil {
		log.Fatal(err)
	}
	second, err := locker.Lock(ctx, key, dblock.Permits(2))
	if err != nil {
		log.Fatal(err)
	}
	_, err = locker.TryLock(ctx, key, dblock.Permits(2))
	fmt.Println("a third export:", errors.Is(err, dblock.ErrNotAcquired))
	_, err = locker.TryLock(ctx, key, dblock.Permits(3))
	fmt.Println("asking for another number:", errors.Is(err, dblock.ErrPermits))

	if err := first.Commit(); err != nil {
		log.Fatal(err)
	}
	err = locker.Do(ctx, key, func(context.Context, *gorm.DB) error {
		fmt.Println("a third export, once one is done")
		return nil
	}, dblock.Permits(2))
	if err != nil {
		log.Fatal(err)
	}
	_ = second.Rollback()
	// Output:
	// a third export: true
	// asking for another number: true
	// a third export, once one is done
}

// TryLock does not wait: a key that is held gives ErrNotAcquired at once.
func ExampleLocker_TryLock() {
	_, locker, closeAll := exampleSetup()
	defer closeAll()
	ctx := context.Background()
	key := dblock.Operation("rebuild-search-index")

	first, err := locker.TryLock(ctx, key)
	if err != nil {
		log.Fatal(err)
	}
	_, err = locker.TryLock(ctx, key)
	fmt.Println("while held:", errors.Is(err, dblock.ErrNotAcquired))

	if err := first.Commit(); err != nil { // releases the key
		log.Fatal(err)
	}
	second, err := locker.TryLock(ctx, key)
	fmt.Println("after Commit:", err)
	_ = second.Rollback()
	// Output:
	// while held: true
	// after Commit: <nil>
}

// LockTx takes a key inside a transaction the caller opened with gorm;
// the transaction's end releases it.
func ExampleLocker_LockTx() {
	db, locker, closeAll := exampleSetup()
	defer closeAll()
	ctx := context.Background()

	err := db.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		if err := locker.LockTx(ctx, tx, dblock.Resource("order:43")); err != nil {
			return err
		}
		return tx.Exec("REPLACE INTO dblock_example_orders (id, status) VALUES (?, ?)", 43, "shipped").Error
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("order 43:", orderStatus(db, 43))
	// Output: order 43: shipped
}

// WithTx lets a service method that locks with Do, and the repositories
// it calls through DB, join the caller's transaction: the lock is held and
// the writes commit when the caller commits.
func ExampleWithTx() {
	db, locker, closeAll := exampleSetup()
	defer closeAll()

	// A repository: it writes through the transaction in scope, if any.
	setStatus := func(ctx context.Context, id int, status string) error {
		return dblock.DB(ctx, db).Exec("REPLACE INTO dblock_example_orders (id, status) VALUES (?, ?)", id, status).Error
	}
	// A service method that locks the order.
	cancelOrder := func(ctx context.Context, id int) error {
		return locker.Do(ctx, dblock.Resource(fmt.Sprint("order:", id)), func(ctx context.Context, _ *gorm.DB) error {
			return setStatus(ctx, id, "cancelled")
		})
	}

	tx := db.Begin()
	ctx := dblock.WithTx(context.Background(), tx)
	if err := setStatus(ctx, 44, "new"); err != nil {
		log.Fatal(err)
	}
	if err := cancelOrder(ctx, 44); err != nil {
		log.Fatal(err)
	}
	_, inTx := dblock.TxFrom(ctx)
	fmt.Println("in the caller's transaction:", inTx)
	if err := tx.Commit().Error; err != nil { // commits both writes, releases order:44
		log.Fatal(err)
	}
	fmt.Println("order 44:", orderStatus(db, 44))
	// Output:
	// in the caller's transaction: true
	// order 44: cancelled
}

// Keys combine granularities: a user's key on an order is a lock of its
// own, distinct from the order's key and from the user's.
func ExampleKey() {
	_, locker, closeAll := exampleSetup()
	defer closeAll()
	ctx := context.Background()

	key := dblock.Key{User: "u-7", Resource: "order:4711"}
	fmt.Println(key)
	fmt.Println("Global with a field:", errors.Is(dblock.Key{Global: true, User: "u-7"}.Validate(), dblock.ErrInvalidKey))

	held, err := locker.TryLock(ctx, key)
	if err != nil {
		log.Fatal(err)
	}
	defer held.Rollback()
	order, err := locker.TryLock(ctx, dblock.Resource("order:4711"))
	fmt.Println("order alone while the user's key is held:", err)
	_ = order.Rollback()
	// Output:
	// user="u-7" resource="order:4711"
	// Global with a field: true
	// order alone while the user's key is held: <nil>
}

// A scheduled job that several replicas run on a ticker, once per hour
// across all of them: each replica calls Do on every tick, and a turn
// within the hour of the last committed run (by the server's clock) is
// skipped with ErrTooSoon; a run whose fn fails rolls back and does not
// count. NoWait skips a turn while another replica is running the job.
func ExampleMinInterval() {
	_, locker, done := exampleSetup()
	defer done()
	ctx := context.Background()
	job := dblock.Resource("example:hourly-report")
	for tick := range 2 {
		err := locker.Do(ctx, job, func(ctx context.Context, tx *gorm.DB) error {
			return nil // the report, written through tx
		}, dblock.MinInterval(time.Hour), dblock.NoWait())
		switch {
		case errors.Is(err, dblock.ErrTooSoon), errors.Is(err, dblock.ErrNotAcquired):
			fmt.Println("tick", tick, "skipped") // the first tick too, if the example ran within the hour
		case err != nil:
			log.Fatal(err)
		default:
			fmt.Println("tick", tick, "ran the report")
		}
	}
}

// A bound on holding: a holder stuck past MaxHold loses the lock, its
// transaction is rolled back on the server, and fn's context is cancelled
// with the cause.
func ExampleMaxHold() {
	_, locker, done := exampleSetup()
	defer done()
	err := locker.Do(context.Background(), dblock.Resource("example:stuck"), func(ctx context.Context, tx *gorm.DB) error {
		<-ctx.Done() // a call that hangs until the lock is taken away
		return context.Cause(ctx)
	}, dblock.MaxHold(100*time.Millisecond))
	fmt.Println(errors.Is(err, dblock.ErrLockLost))
	// Output: true
}

// Holder says which instance holds a key: each Locker writes its Label
// (by default "<hostname>:<pid>") for the connections it locks on.
func ExampleLocker_Holder() {
	db, _, done := exampleSetup()
	defer done()
	ctx := context.Background()
	worker, err := dblock.New(db, dblock.Label("worker-7"))
	if err != nil {
		log.Fatal(err)
	}
	defer worker.Close()
	key := dblock.Resource("report:monthly")
	lk, err := worker.Lock(ctx, key)
	if err != nil {
		log.Fatal(err)
	}
	h, err := worker.Holder(ctx, key)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("held by", h.Label)
	if err := lk.Rollback(); err != nil {
		log.Fatal(err)
	}
	if _, err := worker.Holder(ctx, key); errors.Is(err, dblock.ErrNotHeld) {
		fmt.Println("free")
	}
	// Output:
	// held by worker-7
	// free
}

// A scheduler runs on one instance at a time: it campaigns, works while it
// leads, and resigns when done. Observe follows who leads.
func ExampleElection() {
	_, locker, done := exampleSetup()
	defer done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	election := locker.Election(dblock.Resource("scheduler"))
	changes := election.Observe(ctx)

	lead, err := election.Campaign(ctx, "host-a:8080")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("observed:", <-changes)
	leader, err := election.Leader(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("leader:", leader)
	select {
	case <-lead.Done():
		// Lost (Err says why): stop acting as leader.
	default:
		// Lead, passing lead.Token() with side effects that must fence a
		// deposed leader out.
	}
	if err := lead.Resign(ctx); err != nil {
		log.Fatal(err)
	}
	if _, err := election.Leader(ctx); errors.Is(err, dblock.ErrNoLeader) {
		fmt.Println("no leader")
	}
	// Output:
	// observed: host-a:8080
	// leader: host-a:8080
	// no leader
}
