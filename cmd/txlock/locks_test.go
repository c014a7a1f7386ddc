package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/serverinfo"
	"github.com/txlock/txlock/internal/testdb"
	"github.com/txlock/txlock/schema"
)

// fixture is a fresh lock table with a Locker on it.
type fixture struct {
	dsn    string
	db     *gorm.DB
	table  string
	locker *dblock.Locker
	flags  []string // --dsn and --table for the binary
	biz    string   // a business table, once a test has made one (sharedNamed)
}

// fixtureLabel is the Label of the fixture's Locker.
const fixtureLabel = "cli-fixture"

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dsn, err := testdb.DSN()
	if err != nil {
		t.Fatal(err)
	}
	db := testdb.Open(t)
	table := testdb.Table(t, db)
	testdb.NoLeaks(t, db)
	locker, err := dblock.New(db, dblock.Table(table), dblock.Label(fixtureLabel))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = locker.Close() })
	return &fixture{dsn: dsn, db: db, table: table, locker: locker, flags: []string{"--dsn", dsn, "--table", table}}
}

// exitCode runs the binary and returns stdout, stderr and its exit code.
func (f *fixture) exitCode(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	out, errOut, code, err := runBin(buildBinary(t), stdin, append(args, f.flags...)...)
	if err != nil {
		t.Fatalf("running txlock %v: %v", args, err)
	}
	return out, errOut, code
}

// runBin runs bin with args and stdin; err is set only when it could not
// run. It may be called from any goroutine.
func runBin(bin, stdin string, args ...string) (string, string, int, error) {
	cmd := exec.Command(bin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return stdout.String(), stderr.String(), 0, nil
	case errors.As(err, &ee):
		return stdout.String(), stderr.String(), ee.ExitCode(), nil
	}
	return "", "", -1, err
}

// where is the server and database as the binary names them.
func (f *fixture) where(t *testing.T) string {
	t.Helper()
	cfg, err := gomysql.ParseDSN(f.dsn)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%s@%s(%s)/%s", cfg.User, cfg.Net, cfg.Addr, cfg.DBName)
}

func (f *fixture) sqlDB(t *testing.T) *sql.DB {
	t.Helper()
	sqlDB, err := f.db.DB()
	if err != nil {
		t.Fatal(err)
	}
	return sqlDB
}

// startBin starts the binary and returns a channel that yields its
// result once it has exited.
type binResult struct {
	out, errOut string
	code        int
	err         error
}

func (f *fixture) startBin(t *testing.T, stdin string, args ...string) <-chan binResult {
	t.Helper()
	bin := buildBinary(t)
	done := make(chan binResult, 1)
	go func() {
		out, errOut, code, err := runBin(bin, stdin, append(args, f.flags...)...)
		done <- binResult{out, errOut, code, err}
	}()
	return done
}

// ok runs the binary and fails the test unless it exits 0.
func (f *fixture) ok(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := f.exitCode(t, "", args...)
	if code != 0 {
		t.Fatalf("txlock %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// connID returns the connection id of a held lock's transaction.
func connID(t *testing.T, lk *dblock.Lock) int64 {
	t.Helper()
	var id int64
	if err := lk.Tx().Raw("SELECT CONNECTION_ID()").Scan(&id).Error; err != nil {
		t.Fatal(err)
	}
	return id
}

// held takes key (with opts) and returns the lock and its connection id;
// the lock is rolled back when the test ends, if still held.
func (f *fixture) held(t *testing.T, key dblock.Key, opts ...dblock.LockOption) (*dblock.Lock, int64) {
	t.Helper()
	lk, err := f.locker.Lock(context.Background(), key, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lk.Rollback() })
	return lk, connID(t, lk)
}

// waiter is a goroutine blocked in Lock on a key.
type waiter struct {
	got     chan int64 // the connection id, once the lock is granted
	release chan struct{}
	once    sync.Once
	done    chan struct{} // closed when the goroutine has ended
	err     error         // why it ended, read after done
}

// let makes the waiter commit once it holds the lock.
func (w *waiter) let() { w.once.Do(func() { close(w.release) }) }

func (f *fixture) wait(t *testing.T, key dblock.Key, opts ...dblock.LockOption) *waiter {
	t.Helper()
	w := &waiter{got: make(chan int64, 1), release: make(chan struct{}), done: make(chan struct{})}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	go func() {
		defer close(w.done)
		defer cancel()
		lk, err := f.locker.Lock(ctx, key, opts...)
		if err != nil {
			w.err = err
			return
		}
		var id int64
		if err := lk.Tx().Raw("SELECT CONNECTION_ID()").Scan(&id).Error; err != nil {
			_ = lk.Rollback()
			w.err = err
			return
		}
		w.got <- id
		<-w.release
		w.err = lk.Commit()
	}()
	t.Cleanup(func() {
		w.let()
		cancel()
		<-w.done
	})
	return w
}

// poll calls try every 250 ms until it returns true or 10 s pass. MariaDB
// refreshes its INNODB_* cache only after 100 ms without reads: polling
// faster would keep it stale.
func poll(t *testing.T, what string, try func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	last := ""
	for time.Now().Before(deadline) {
		ok, state := try()
		if ok {
			return
		}
		last = state
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("%s: not seen within 10 s; last output:\n%s", what, last)
}

func findKey(s *Snapshot, resource string) *HeldKey {
	for i := range s.Keys {
		if s.Keys[i].Key.Resource == resource {
			return &s.Keys[i]
		}
	}
	return nil
}

func waiterIDs(k *HeldKey) []int64 {
	var ids []int64
	for _, w := range k.Waiters {
		ids = append(ids, w.ID)
	}
	slices.Sort(ids)
	return ids
}

// The tests that read MariaDB's INNODB_* views do not run in parallel with
// each other: their reads, interleaved, could keep the server's cache of
// those views from being refreshed (it is refreshed only after 100 ms
// without reads).

func TestBinaryLocksShowsHoldersAndWaiters(t *testing.T) {
	f := newFixture(t)
	contended := dblock.Key{Resource: "order:42", User: "u-7"}
	alone := dblock.Resource("job:nightly")
	free := dblock.Resource("order:free")
	// A key with a row that nobody holds must not be shown.
	if err := f.locker.Do(context.Background(), free, func(context.Context, *gorm.DB) error { return nil }); err != nil {
		t.Fatal(err)
	}
	holder, holderConn := f.held(t, contended)
	_, aloneConn := f.held(t, alone)
	w1 := f.wait(t, contended)
	w2 := f.wait(t, contended)

	var snap Snapshot
	poll(t, "the holder and two waiters of "+contended.String(), func() (bool, string) {
		out := f.ok(t, "locks", "--json")
		snap = Snapshot{}
		if err := json.Unmarshal([]byte(out), &snap); err != nil {
			t.Fatalf("locks --json: %v\n%s", err, out)
		}
		k := findKey(&snap, "order:42")
		return k != nil && k.Holder != nil && k.Holder.ID == holderConn && len(k.Waiters) == 2, out
	})
	k := findKey(&snap, "order:42")
	if k.Key != (keyJSON{Resource: "order:42", User: "u-7"}) || k.Source != "lock_waits" || k.RowID == 0 {
		t.Errorf("contended key = %+v", k)
	}
	if k.Holder.User == "" || k.Holder.Host == "" || k.Holder.TrxAge == nil || k.Holder.Label != fixtureLabel {
		t.Errorf("holder lacks user, host, transaction age or label: %+v", *k.Holder)
	}
	waiters := waiterIDs(k)
	for _, w := range k.Waiters {
		if w.ID == holderConn || w.Waited == nil || *w.Waited <= 0 || w.User == "" || w.Label != fixtureLabel {
			t.Errorf("waiter %+v", w)
		}
	}
	if a := findKey(&snap, "job:nightly"); a == nil || a.Holder != nil || a.Source != "probe" || len(a.Waiters) != 0 {
		t.Errorf("uncontended held key = %+v, want it held with an unknown holder (probe)", a)
	}
	if findKey(&snap, "order:free") != nil {
		t.Error("a free key is shown as held")
	}
	if !slices.ContainsFunc(snap.Candidates, func(c Conn) bool { return c.ID == aloneConn }) {
		t.Errorf("the uncontended holder %d is not among the candidates %+v", aloneConn, snap.Candidates)
	}
	if snap.Flavor != "MariaDB" || !slices.Contains(snap.Notes, cacheNote) {
		t.Errorf("flavor %q, notes %q", snap.Flavor, snap.Notes)
	}

	// The table for people, with the cache note; --key filters.
	out := f.ok(t, "locks", "--key", "resource=order:42,user=u-7")
	t.Logf("txlock locks --key resource=order:42,user=u-7:\n%s", out)
	for _, want := range []string{"KEY", "LABEL", fixtureLabel, "WAITED", `user="u-7" resource="order:42"`, "holder", "waiter", "refreshed at most every 100 ms"} {
		if !strings.Contains(out, want) {
			t.Errorf("table output lacks %q", want)
		}
	}
	if strings.Contains(out, "job:nightly") || strings.Count(out, "waiter") != 2 {
		t.Errorf("--key did not filter to one key with two waiters:\n%s", out)
	}

	// --identify names the uncontended holder. Between runs, leave the
	// INNODB_* cache unread long enough for the server to refresh it.
	time.Sleep(250 * time.Millisecond)
	out = f.ok(t, "locks", "--identify", "--key-resource", "job:nightly")
	t.Logf("txlock locks --identify --key-resource job:nightly:\n%s", out)
	time.Sleep(250 * time.Millisecond)
	var ident Snapshot
	if err := json.Unmarshal([]byte(f.ok(t, "locks", "--identify", "--json", "--key-resource", "job:nightly")), &ident); err != nil {
		t.Fatal(err)
	}
	if len(ident.Keys) != 1 || ident.Keys[0].Holder == nil || ident.Keys[0].Holder.ID != aloneConn || ident.Keys[0].Source != "identify" {
		t.Errorf("--identify: %+v, want holder %d", ident.Keys, aloneConn)
	}

	// --probe=false: only what the views show.
	time.Sleep(250 * time.Millisecond)
	var views Snapshot
	if err := json.Unmarshal([]byte(f.ok(t, "locks", "--probe=false", "--json")), &views); err != nil {
		t.Fatal(err)
	}
	if findKey(&views, "job:nightly") != nil || findKey(&views, "order:42") == nil {
		t.Errorf("--probe=false: %+v", views.Keys)
	}

	// The waiters shown were the real ones: they get the lock in turn.
	if err := holder.Commit(); err != nil {
		t.Fatal(err)
	}
	var granted []int64
	for _, w := range []*waiter{w1, w2} {
		go func() {
			// Each commits as soon as it holds the lock, letting the other in.
			if id, ok := <-w.got; ok {
				w.got <- id
				w.let()
			}
		}()
	}
	for i, w := range []*waiter{w1, w2} {
		select {
		case <-w.done:
		case <-time.After(20 * time.Second):
			t.Fatalf("waiter %d did not get the lock", i+1)
		}
		if w.err != nil {
			t.Fatalf("waiter %d: %v", i+1, w.err)
		}
		granted = append(granted, <-w.got)
	}
	slices.Sort(granted)
	if !slices.Equal(granted, waiters) {
		t.Errorf("waiters shown %v, connections granted %v", waiters, granted)
	}
}

func TestLocksWatch(t *testing.T) {
	f := newFixture(t)
	f.held(t, dblock.Resource("watched"))
	root, _ := newRootCmd(func(string) string { return "" })
	root.SetOut(io.Discard)
	root.SetErr(io.Discard)
	root.SetArgs(append([]string{"locks", "--watch", "--interval", "100ms"}, f.flags...))
	if err := root.ExecuteContext(context.Background()); err == nil || !strings.Contains(err.Error(), "at least 200ms") {
		t.Errorf("--watch --interval 100ms on MariaDB: %v, want an error", err)
	}

	// Interrupted (as by ^C) once it has printed three snapshots.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	root, _ = newRootCmd(func(string) string { return "" })
	out := &linesThenCancel{n: 3, cancel: cancel}
	root.SetOut(out)
	root.SetErr(out)
	root.SetArgs(append([]string{"locks", "--watch", "--interval", "250ms", "--json"}, f.flags...))
	start := time.Now()
	if err := root.ExecuteContext(ctx); err != nil {
		t.Fatalf("locks --watch: %v\n%s", err, out.buf.String())
	}
	lines := strings.Split(strings.TrimSpace(out.buf.String()), "\n")
	t.Logf("--watch printed %d snapshot(s) in %v", len(lines), time.Since(start))
	if len(lines) < 3 {
		t.Fatalf("--watch printed %d snapshot(s) in 30 s, want 3:\n%s", len(lines), out.buf.String())
	}
	for _, l := range lines {
		var s Snapshot
		if err := json.Unmarshal([]byte(l), &s); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		if findKey(&s, "watched") == nil {
			t.Errorf("snapshot without the held key: %s", l)
		}
	}
}

// linesThenCancel collects output and calls cancel once it holds n lines.
type linesThenCancel struct {
	buf    bytes.Buffer
	n      int
	cancel func()
}

func (w *linesThenCancel) Write(p []byte) (int, error) {
	w.buf.Write(p)
	if bytes.Count(w.buf.Bytes(), []byte("\n")) >= w.n {
		w.cancel()
	}
	return len(p), nil
}

// TestLocksDropsStaleCacheEntries freezes MariaDB's INNODB_* cache (it is
// refreshed only after 100 ms without reads) with a reader every 10 ms,
// ends a holder and its waiter, and checks that locks leaves out what the
// frozen cache still shows.
func TestLocksDropsStaleCacheEntries(t *testing.T) {
	f := newFixture(t)
	key := dblock.Resource("stale")
	holder, holderConn := f.held(t, key)
	w := f.wait(t, key)
	sqlDB, err := f.db.DB()
	if err != nil {
		t.Fatal(err)
	}
	srv, err := detectServer(context.Background(), sqlDB)
	if err != nil {
		t.Fatal(err)
	}
	in := &inspector{db: sqlDB, srv: srv, table: f.table, where: "test", probe: true}
	poll(t, "the holder and its waiter", func() (bool, string) {
		s, err := in.snapshot(context.Background(), dblock.Key{})
		if err != nil {
			t.Fatal(err)
		}
		k := findKey(s, "stale")
		b, _ := json.Marshal(s)
		return k != nil && k.Holder != nil && k.Holder.ID == holderConn && len(k.Waiters) == 1, string(b)
	})

	stop := freezeCache(t, sqlDB)
	if err := holder.Commit(); err != nil {
		t.Fatal(err)
	}
	<-w.got
	w.let()
	<-w.done
	if w.err != nil {
		t.Fatal(w.err)
	}
	time.Sleep(200 * time.Millisecond) // frozen: the cache still shows the wait
	s, err := in.snapshot(context.Background(), dblock.Key{})
	// The wait has ended: a fill that shows it was made before, so if the
	// cache shows it now, every read of the snapshot got that old fill.
	cached := cachedWaits(t, sqlDB, in.lockTableName())
	stop()
	if err != nil {
		t.Fatal(err)
	}
	if cached == 0 {
		t.Log("the cache was refreshed despite the reader (another client paused it?): nothing stale to leave out")
	} else if !slices.ContainsFunc(s.Notes, func(n string) bool { return strings.Contains(n, "left out") }) {
		t.Errorf("the frozen cache still shows %d wait(s), but no note says entries were left out: %q", cached, s.Notes)
	}
	if len(s.Keys) != 0 {
		t.Errorf("released key shown from the stale cache: %+v", s.Keys)
	}
}

// TestLocksLabelsIgnoreStaleRows: locks shows the label of a holder and
// of a waiter from the session table, and none for a connection whose row
// was written before the server's start (a past run's connection with the
// same id).
func TestLocksLabelsIgnoreStaleRows(t *testing.T) {
	f := newFixture(t)
	key := dblock.Resource("labelled")
	_, holderConn := f.held(t, key)
	f.wait(t, key)
	if err := f.db.Exec("UPDATE `"+schema.SessionTable(f.table)+"` SET label = 'past-run', seen = NOW(6) - INTERVAL (SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'Uptime') + 5 SECOND WHERE conn_id = ?", holderConn).Error; err != nil {
		t.Fatal(err)
	}
	var k *HeldKey
	poll(t, "the holder and its waiter", func() (bool, string) {
		out := f.ok(t, "locks", "--json")
		var s Snapshot
		if err := json.Unmarshal([]byte(out), &s); err != nil {
			t.Fatalf("locks --json: %v\n%s", err, out)
		}
		k = findKey(&s, "labelled")
		return k != nil && k.Holder != nil && k.Holder.ID == holderConn && len(k.Waiters) == 1, out
	})
	if k.Holder.Label != "" || k.Waiters[0].Label != fixtureLabel {
		t.Errorf("holder label %q (its row is of a past run: want none), waiter label %q (want %q)", k.Holder.Label, k.Waiters[0].Label, fixtureLabel)
	}
}

func TestParseKeySpec(t *testing.T) {
	for _, tc := range []struct {
		spec string
		want dblock.Key
		err  string
	}{
		{"", dblock.Key{}, ""},
		{"resource=order:42", dblock.Resource("order:42"), ""},
		{"resource=order:42, user=u-7", dblock.Key{Resource: "order:42", User: "u-7"}, ""},
		{"user_id=u-7,operation=refund,method=S.M", dblock.Key{User: "u-7", Operation: "refund", Method: "S.M"}, ""},
		{"global", dblock.Global(), ""},
		{"global=true", dblock.Global(), ""},
		{"resource=a=b", dblock.Resource("a=b"), ""},
		{"colour=red", dblock.Key{}, "unknown field"},
		{"resource", dblock.Key{}, "needs a value"},
		{"resource=a,resource=b", dblock.Key{}, "given twice"},
		{"global=maybe", dblock.Key{}, "want true or false"},
	} {
		got, err := parseKeySpec(tc.spec)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%q: error %v, want %q", tc.spec, err, tc.err)
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("%q = %+v, %v; want %+v", tc.spec, got, err, tc.want)
		}
	}
	kf := keyFlags{spec: "resource=a", user: "u", resource: "a"}
	if k, set, err := kf.key(); err != nil || !set || k != (dblock.Key{Resource: "a", User: "u"}) {
		t.Errorf("merge: %+v %v %v", k, set, err)
	}
	kf = keyFlags{spec: "resource=a", resource: "b"}
	if _, _, err := kf.key(); err == nil {
		t.Error("conflicting --key and --key-resource accepted")
	}
	if _, err := (&keyFlags{}).exact(); err == nil {
		t.Error("release without a key accepted")
	}
	if _, err := (&keyFlags{spec: "global", user: "u"}).exact(); !errors.Is(err, dblock.ErrInvalidKey) {
		t.Errorf("global+user: %v", err)
	}
	if !matches(dblock.Key{Resource: "a", User: "u"}, dblock.User("u")) || matches(dblock.Resource("a"), dblock.User("u")) {
		t.Error("matches")
	}
}

// TestLockViewSQL checks the text of the per-flavour lock queries; the
// MySQL one cannot run here (the test server is MariaDB).
func TestLockViewSQL(t *testing.T) {
	for _, tc := range []struct {
		name, q string
		params  int
		want    []string
	}{
		{"MySQL", mySQLLocksSQL, 2, []string{
			"FROM performance_schema.data_locks d",
			"JOIN performance_schema.threads t ON t.THREAD_ID = d.THREAD_ID",
			"LEFT JOIN performance_schema.data_lock_waits w ON w.ENGINE = d.ENGINE AND w.REQUESTING_ENGINE_LOCK_ID = d.ENGINE_LOCK_ID",
			"t.PROCESSLIST_ID", "d.LOCK_STATUS = 'WAITING'", "w.BLOCKING_ENGINE_TRANSACTION_ID",
			"d.OBJECT_SCHEMA = DATABASE() AND d.OBJECT_NAME IN (?, ?)", "d.OBJECT_NAME\nFROM", "d.INDEX_NAME = 'PRIMARY'", "d.LOCK_TYPE = 'RECORD'",
			"d.LOCK_MODE IN ('X', 'S', 'X,REC_NOT_GAP', 'S,REC_NOT_GAP')",
		}},
		{"MariaDB", mariaDBLocksSQL, 4, []string{
			"information_schema.INNODB_LOCK_WAITS", "information_schema.INNODB_LOCKS", "information_schema.INNODB_TRX",
			"rl.lock_table IN (?, ?)", "bl.lock_table IN (?, ?)", "rl.lock_table\nFROM", "bl.lock_table\nFROM", "NOT (bt.trx_requested_lock_id <=> w.blocking_lock_id)",
			"rl.lock_mode", "bl.lock_mode", "w.blocking_trx_id <> 0", "w.requesting_trx_id <> 0",
		}},
	} {
		if n := strings.Count(tc.q, "?"); n != tc.params {
			t.Errorf("%s: %d placeholders, want %d", tc.name, n, tc.params)
		}
		for _, w := range tc.want {
			if !strings.Contains(tc.q, w) {
				t.Errorf("%s lock query lacks %q", tc.name, w)
			}
		}
		// Seven columns, in the order entries scans them.
		sel := tc.q[len("SELECT "):strings.Index(tc.q, "\nFROM")]
		if n := topLevelCommas(sel) + 1; n != 7 {
			t.Errorf("%s: %d columns selected, want 7: %s", tc.name, n, sel)
		}
	}
	in := &inspector{srv: serverInfo{Version: serverinfo.Version{MariaDB: true}, DB: "test"}, table: "tb_lock"}
	if got := in.lockTableName(); got != "`test`.`tb_lock`" {
		t.Errorf("MariaDB lock_table = %s", got)
	}
	in.srv.MariaDB = false
	if got := in.lockTableName(); got != "tb_lock" {
		t.Errorf("MySQL OBJECT_NAME = %s", got)
	}
}

// topLevelCommas counts the commas of s outside parentheses.
func topLevelCommas(s string) int {
	n, depth := 0, 0
	for _, r := range s {
		switch {
		case r == '(':
			depth++
		case r == ')':
			depth--
		case r == ',' && depth == 0:
			n++
		}
	}
	return n
}

// freezeCache reads MariaDB's INNODB_* cache every 10 ms until the
// returned function is called: the server refreshes it only after 100 ms
// without reads, so it stays as it was.
func freezeCache(t *testing.T, db *sql.DB) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			var n int
			_ = db.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.INNODB_LOCK_WAITS").Scan(&n)
			time.Sleep(10 * time.Millisecond)
		}
	}()
	stop = sync.OnceFunc(func() { cancel(); <-done })
	t.Cleanup(stop)
	return stop
}

// TestBinaryLocksNeverNamesAStaleHolder: while another client keeps
// MariaDB's INNODB_* cache from being refreshed, the holder it shows
// commits (its pooled connection stays open) and the waiter it shows takes
// the key. locks used to name the old holder as the holder and leave out
// the real one; it must not name the old holder.
func TestBinaryLocksNeverNamesAStaleHolder(t *testing.T) {
	f := newFixture(t)
	key := dblock.Resource("stale:holder")
	first, firstConn := f.held(t, key)
	w := f.wait(t, key)
	poll(t, "the holder and its waiter", func() (bool, string) {
		out := f.ok(t, "locks", "--json", "--key-resource", "stale:holder")
		var s Snapshot
		if err := json.Unmarshal([]byte(out), &s); err != nil {
			t.Fatalf("locks --json: %v\n%s", err, out)
		}
		k := findKey(&s, "stale:holder")
		return k != nil && k.Holder != nil && k.Holder.ID == firstConn && len(k.Waiters) == 1, out
	})

	sqlDB := f.sqlDB(t)
	stop := freezeCache(t, sqlDB)
	if err := first.Commit(); err != nil {
		t.Fatal(err)
	}
	var secondConn int64
	select {
	case secondConn = <-w.got:
	case <-w.done:
		t.Fatalf("waiter: %v", w.err)
	}
	// The first holder's connection is back in the pool, open and idle.
	var alive int
	if err := sqlDB.QueryRow("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ?", firstConn).Scan(&alive); err != nil {
		t.Fatal(err)
	}
	in := &inspector{srv: serverInfo{Version: serverinfo.Version{MariaDB: true}, DB: dbName(t, sqlDB)}, table: f.table}
	t.Logf("connection %d (the first holder) alive: %v; the frozen cache shows %d wait(s); connection %d holds the key now",
		firstConn, alive == 1, cachedWaits(t, sqlDB, in.lockTableName()), secondConn)

	out := f.ok(t, "locks", "--json", "--key-resource", "stale:holder")
	// The wait has ended: if the cache shows it still, locks read only
	// that old fill.
	cached := cachedWaits(t, sqlDB, in.lockTableName())
	stop()
	t.Logf("txlock locks --json while the cache is frozen:\n%s", out)
	var s Snapshot
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatal(err)
	}
	k := findKey(&s, "stale:holder")
	switch {
	case k == nil:
		t.Errorf("the held key is not shown: %+v", s.Keys)
	case k.Holder != nil && k.Holder.ID == firstConn:
		t.Errorf("connection %d, which committed, is named as the holder; connection %d holds the key", firstConn, secondConn)
	case k.Holder != nil && k.Holder.ID != secondConn:
		t.Errorf("connection %d is named as the holder; connection %d holds the key", k.Holder.ID, secondConn)
	}
	if cached > 0 && !slices.ContainsFunc(s.Notes, func(n string) bool { return strings.Contains(n, "was not refreshed") }) {
		t.Errorf("the cache stayed frozen, but no note says it was stale: %q", s.Notes)
	}
	if alive == 0 {
		t.Log("the first holder's connection had closed: the old code would have left it out too")
	}
	w.let()
}

// cachedWaits returns how many lock waits on lockTable (as INNODB_LOCKS
// names it) MariaDB's INNODB_* cache shows.
func cachedWaits(t *testing.T, db *sql.DB, lockTable string) int {
	t.Helper()
	var n int
	if err := db.QueryRow(`SELECT COUNT(*) FROM information_schema.INNODB_LOCK_WAITS w
		JOIN information_schema.INNODB_LOCKS l ON l.lock_id = w.requested_lock_id WHERE l.lock_table = ?`, lockTable).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// dbName returns the current database.
func dbName(t *testing.T, db *sql.DB) string {
	t.Helper()
	var name string
	if err := db.QueryRow("SELECT DATABASE()").Scan(&name); err != nil {
		t.Fatal(err)
	}
	return name
}
