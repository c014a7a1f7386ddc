package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"github.com/redis/go-redis/v9"
	"gorm.io/driver/mysql"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/migrations"
)

// env is what every contender shares: the server, the tables this run
// created, and the keys with their row ids.
type env struct {
	plain, ip     *gomysql.Config // the user's DSN without and with interpolateParams
	admin         *sql.DB
	serverVersion string
	transport     string // "unix socket /run/..." or "TCP 127.0.0.1:3306"
	machine       string
	serverPID     int // of the local server, for its CPU time; 0 when remote

	prefix     string // of every table and key this run creates
	lockTable  string
	bizTable   string
	leaseTable string
	hierTable  string // a second lock table, with the hierarchy on ("" unless the hierarchy workload runs)

	permits    int           // of the hot key's semaphore (the semaphore workload)
	permitHold time.Duration // how long a holder of the semaphore workload holds
	permitIDs  []int64       // the hot key's permit rows, by slot (the raw semaphore)
	hierGlobal int64         // the global key's row in hierTable

	own []keyRef // one per goroutine, each its own key
	hot keyRef   // the one hot key

	redis      *redis.Client // nil when Redis is not reachable
	redisNote  string
	leasePoll  time.Duration
	bizLiteral bool
}

// keyRef is one lock key as every contender names it, with the business
// row it protects.
type keyRef struct {
	key    dblock.Key // txlock
	lockID int64      // its row in the lock table (raw floor)
	hierID int64      // its row in hierTable (the raw hierarchy), 0 without it
	name   string     // GET_LOCK name, lease-row name, Redis key
	bizID  int        // the business row updated under the lock

	bizSQL  string // "UPDATE biz SET v = v + 1 WHERE id = <bizID>" (or with ?)
	readSQL string // "SELECT v FROM biz WHERE id = <bizID>" (or with ?): the shared workload's read
}

// key returns the key of goroutine i in cell c.
func (e *env) key(c cell, i int) keyRef {
	if c.hot {
		return e.hot
	}
	return e.own[i]
}

// bizArgs returns the arguments of the business statement of k.
func (e *env) bizArgs(k keyRef) []any {
	if e.bizLiteral {
		return nil
	}
	return []any{k.bizID}
}

func setup(ctx context.Context, o *options) (*env, error) {
	cfg, err := gomysql.ParseDSN(o.dsn)
	if err != nil {
		return nil, fmt.Errorf("-dsn: %w", err)
	}
	e := &env{machine: machine(), leasePoll: o.leasePoll, bizLiteral: !o.bizPlaceholder, permits: o.permits, permitHold: o.permitHold}
	if o.socket == "auto" {
		sock, err := askSocket(ctx, cfg)
		if err != nil {
			return nil, fmt.Errorf("-socket auto: %w", err)
		}
		o.socket = sock
	}
	if o.socket != "" {
		cfg.Net, cfg.Addr = "unix", o.socket
		e.transport = "unix socket " + o.socket
	} else {
		e.transport = strings.ToUpper(cfg.Net) + " " + cfg.Addr
	}
	e.plain, e.ip = cfg.Clone(), cfg.Clone()
	e.plain.InterpolateParams = false
	e.ip.InterpolateParams = true
	if e.admin, err = openDB(e.ip, 4); err != nil {
		return nil, err
	}
	if err := e.admin.QueryRowContext(ctx, "SELECT VERSION()").Scan(&e.serverVersion); err != nil {
		e.admin.Close()
		return nil, fmt.Errorf("no server at %s: %w", e.transport, err)
	}
	var nonce [4]byte
	_, _ = rand.Read(nonce[:])
	e.prefix = "txlb_" + hex.EncodeToString(nonce[:])
	e.lockTable, e.bizTable, e.leaseTable = e.prefix, e.prefix+"_biz", e.prefix+"_lease"
	if slices.Contains(o.workloads, hierLock) {
		e.hierTable = e.prefix + "_h"
	}
	if err := e.createTables(ctx, max(slicesMax(o.own), slicesMax(o.hierGoroutines), 1)); err != nil {
		_ = e.cleanup(false)
		return nil, err
	}
	if err := e.createModes(ctx, slices.Contains(o.workloads, permitHold)); err != nil {
		_ = e.cleanup(false)
		return nil, err
	}
	e.connectRedis(ctx, o.redisAddr)
	e.serverPID = findServerPID(ctx, e.admin, e.transport)
	// The GET_LOCK pattern holds two connections per goroutine.
	var maxConns, connected int
	var name string
	if err := e.admin.QueryRowContext(ctx, "SELECT @@max_connections").Scan(&maxConns); err == nil &&
		e.admin.QueryRowContext(ctx, "SHOW GLOBAL STATUS LIKE 'Threads_connected'").Scan(&name, &connected) == nil {
		if need := 2*max(slicesMax(o.own), slicesMax(o.hot), slicesMax(o.readers), slicesMax(o.permitWorkers), slicesMax(o.hierGoroutines)) + 8; need > maxConns-connected {
			fmt.Fprintf(os.Stderr, "txlock-bench: warning: the largest cells need about %d connections; the server allows %d and %d are in use (runs that cannot connect are retried, then skipped)\n",
				need, maxConns, connected)
		}
	}
	return e, nil
}

func slicesMax(xs []int) int {
	m := 0
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}

// askSocket asks the server at cfg for its unix socket.
func askSocket(ctx context.Context, cfg *gomysql.Config) (string, error) {
	db, err := openDB(cfg, 1)
	if err != nil {
		return "", err
	}
	defer db.Close()
	var s sql.NullString
	if err := db.QueryRowContext(ctx, "SELECT @@socket").Scan(&s); err != nil {
		return "", err
	}
	if !s.Valid || s.String == "" {
		return "", errors.New("the server has no unix socket")
	}
	if _, err := os.Stat(s.String); err != nil {
		return "", fmt.Errorf("the server's socket is not on this machine: %w", err)
	}
	return s.String, nil
}

// openDB opens a database/sql pool of at most n connections on cfg.
func openDB(cfg *gomysql.Config, n int) (*sql.DB, error) {
	conn, err := gomysql.NewConnector(cfg)
	if err != nil {
		return nil, err
	}
	db := sql.OpenDB(conn)
	db.SetMaxOpenConns(n)
	db.SetMaxIdleConns(n)
	return db, nil
}

// openGorm opens gorm on cfg, the way a service does, with a pool of at
// most n connections.
func openGorm(cfg *gomysql.Config, n int) (*gorm.DB, *sql.DB, error) {
	gdb, err := gorm.Open(mysql.New(mysql.Config{DSNConfig: cfg.Clone()}), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		return nil, nil, err
	}
	sqlDB, err := gdb.DB()
	if err != nil {
		return nil, nil, err
	}
	sqlDB.SetMaxOpenConns(n)
	sqlDB.SetMaxIdleConns(n)
	return gdb, sqlDB, nil
}

// warm opens n connections of db at once, so that no measurement pays for
// connecting.
func warm(ctx context.Context, db *sql.DB, n int) error {
	conns := make([]*sql.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := db.Conn(ctx)
		if err != nil {
			return err
		}
		conns = append(conns, c)
	}
	return nil
}

// createTables creates the lock table (with migrations.Up), the business
// table and the lease table, and one key per goroutine plus the hot key.
func (e *env) createTables(ctx context.Context, n int) error {
	if _, err := migrations.Up(ctx, e.admin, migrations.Table(e.lockTable)); err != nil {
		return fmt.Errorf("creating the lock table: %w", err)
	}
	for _, q := range []string{
		"CREATE TABLE `" + e.bizTable + "` (id INT NOT NULL PRIMARY KEY, v BIGINT NOT NULL DEFAULT 0) ENGINE=InnoDB",
		// ShedLock's table, as its documentation creates it for MySQL.
		"CREATE TABLE `" + e.leaseTable + "` (name VARCHAR(64) NOT NULL PRIMARY KEY, lock_until TIMESTAMP(3) NOT NULL, " +
			"locked_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3), locked_by VARCHAR(255) NOT NULL) ENGINE=InnoDB",
	} {
		if _, err := e.admin.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("creating the tables: %w", err)
		}
	}
	mk := func(i int, label string) keyRef {
		name := e.prefix + ":" + label
		id := "?"
		if e.bizLiteral {
			id = strconv.Itoa(i)
		}
		return keyRef{key: dblock.Resource(name), name: name, bizID: i,
			bizSQL:  "UPDATE `" + e.bizTable + "` SET v = v + 1 WHERE id = " + id,
			readSQL: "SELECT v FROM `" + e.bizTable + "` WHERE id = " + id}
	}
	for i := range n {
		e.own = append(e.own, mk(i, "own:"+strconv.Itoa(i)))
	}
	e.hot = mk(n, "hot")
	all := append(append([]keyRef(nil), e.own...), e.hot)

	// The key rows are created by txlock itself, so that the raw floor
	// locks exactly the rows that txlock locks.
	gdb, sqlDB, err := openGorm(e.ip, 2)
	if err != nil {
		return err
	}
	defer sqlDB.Close()
	l, err := dblock.New(gdb, dblock.Table(e.lockTable))
	if err != nil {
		return err
	}
	defer l.Close()
	for i := range all {
		k := &all[i]
		if err := l.Do(ctx, k.key, func(context.Context, *gorm.DB) error { return nil }); err != nil {
			return fmt.Errorf("creating the key rows: %w", err)
		}
		if err := e.admin.QueryRowContext(ctx, "SELECT id FROM `"+e.lockTable+"` WHERE resource = ?", k.name).Scan(&k.lockID); err != nil {
			return fmt.Errorf("reading the key rows: %w", err)
		}
		if _, err := e.admin.ExecContext(ctx, "INSERT INTO `"+e.bizTable+"` (id) VALUES (?)", k.bizID); err != nil {
			return err
		}
		if _, err := e.admin.ExecContext(ctx, "INSERT INTO `"+e.leaseTable+"` (name, lock_until, locked_by) VALUES (?, NOW(3), '')", k.name); err != nil {
			return err
		}
	}
	e.own, e.hot = all[:n], all[n]
	return nil
}

// connectRedis connects to Redis, or notes why the Redis contender is
// skipped.
func (e *env) connectRedis(ctx context.Context, addr string) {
	if addr == "" {
		e.redisNote = "skipped (-redis \"\")"
		return
	}
	c := redis.NewClient(&redis.Options{Addr: addr, Protocol: 2, DisableIdentity: true})
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	v, err := c.Info(pctx, "server").Result()
	if err != nil {
		c.Close()
		e.redisNote = fmt.Sprintf("skipped: Redis at %s: %v", addr, err)
		return
	}
	version := "?"
	for _, line := range strings.Split(v, "\n") {
		if after, ok := strings.CutPrefix(line, "redis_version:"); ok {
			version = strings.TrimSpace(after)
		}
	}
	c.Close()
	e.redis = redis.NewClient(&redis.Options{Addr: addr, Protocol: 2, DisableIdentity: true})
	e.redisNote = "Redis " + version + " at " + addr
}

// redisClient returns a client with a pool of n connections.
func (e *env) redisClient(n int) *redis.Client {
	opt := *e.redis.Options()
	opt.PoolSize, opt.MinIdleConns = n, n
	return redis.NewClient(&opt)
}

// cleanup drops what setup created, unless keep.
func (e *env) cleanup(keep bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	defer e.admin.Close()
	if e.redis != nil {
		keys := []string{e.hot.name}
		for _, k := range e.own {
			keys = append(keys, k.name)
		}
		_ = e.redis.Del(ctx, keys...).Err()
		e.redis.Close()
	}
	if keep {
		fmt.Fprintf(os.Stderr, "txlock-bench: kept tables %s, %s, %s %s\n", e.lockTable, e.bizTable, e.leaseTable, e.hierTable)
		return nil
	}
	var errs []error
	drop := []string{e.bizTable, e.leaseTable}
	for _, t := range []string{e.lockTable, e.hierTable} {
		if t == "" {
			continue
		}
		if _, err := migrations.Down(ctx, e.admin, migrations.Table(t)); err != nil {
			errs = append(errs, err)
		}
		drop = append(drop, migrations.VersionTable(t))
	}
	for _, t := range drop {
		if _, err := e.admin.ExecContext(ctx, "DROP TABLE IF EXISTS `"+t+"`"); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("dropping the tables of this run (prefix %s): %w", e.prefix, err)
	}
	return nil
}

// findServerPID returns the pid of the local mariadbd (or mysqld) when the
// server runs on this machine, so that its CPU time per cycle can be
// reported; 0 when there is none (a remote server). It is the one the
// server's @@pid_file names when this machine can read it (other servers,
// such as tests' throwaway ones, may run here too), else the first found.
func findServerPID(ctx context.Context, admin *sql.DB, transport string) int {
	if !strings.HasPrefix(transport, "unix") && !strings.Contains(transport, "127.0.0.1") && !strings.Contains(transport, "localhost") {
		return 0
	}
	var pidFile string
	if admin.QueryRowContext(ctx, "SELECT @@pid_file").Scan(&pidFile) == nil {
		if b, err := os.ReadFile(pidFile); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && isServer(pid) {
				return pid
			}
		}
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil {
			continue
		}
		if isServer(pid) {
			return pid
		}
	}
	return 0
}

// isServer reports whether process pid is a mariadbd or mysqld.
func isServer(pid int) bool {
	comm, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	if err != nil {
		return false
	}
	switch strings.TrimSpace(string(comm)) {
	case "mariadbd", "mysqld":
		return true
	}
	return false
}

// serverCPU returns the CPU time the server process has used, or -1.
func (e *env) serverCPU() time.Duration {
	if e.serverPID == 0 {
		return -1
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(e.serverPID) + "/stat")
	if err != nil {
		return -1
	}
	// Fields after the command name, which is in parentheses: utime and
	// stime are the 14th and 15th fields of the line.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return -1
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return -1
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return -1
	}
	return time.Duration(ut+st) * time.Second / clockTicks
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat times: 100 on Linux.
const clockTicks = 100
