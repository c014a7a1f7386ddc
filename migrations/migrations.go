package migrations

import (
	"cmp"
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"slices"
	"strings"
	"testing/fstest"
	"time"

	gomysql "github.com/go-sql-driver/mysql"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/database"

	"github.com/txlock/txlock/schema"
)

// sqlFiles holds the versioned migrations, named NNNNN_description.sql.
// Every identifier in them derives from the literal [schema.DefaultTable],
// which [render] rewrites to the configured table name.
//
//go:embed sql/*.sql
var sqlFiles embed.FS

// sqlDir is the directory of sqlFiles that holds the migrations.
const sqlDir = "sql"

// defaultLockTimeout bounds how long Up and Down wait for another process
// that is migrating the same table, unless the context expires earlier.
const defaultLockTimeout = 5 * time.Minute

// Option configures [Up], [Down] and [Status].
type Option func(*config) error

// config is the result of applying Options.
type config struct {
	table       string
	logger      *slog.Logger
	lockTimeout time.Duration
}

// Table sets the lock table's name (default [schema.DefaultTable],
// "tb_lock"). The fence table, the unique key and the version table are
// named after it: name+"_fence", "uk_"+name+"_key_hash" and
// name+"_schema_version". The name must pass [schema.ValidTableName].
func Table(name string) Option {
	return func(c *config) error {
		if err := schema.ValidTableName(name); err != nil {
			return err
		}
		c.table = name
		return nil
	}
}

// Logger makes Up and Down log each migration they apply or roll back to
// l. By default they log nothing.
func Logger(l *slog.Logger) Option {
	return func(c *config) error {
		if l == nil {
			return errors.New("nil logger")
		}
		c.logger = l
		return nil
	}
}

// LockTimeout sets how long Up and Down wait for another process that
// is migrating the same table before they give up (default 5 minutes). The
// context's deadline, if earlier, applies as well.
func LockTimeout(d time.Duration) Option {
	return func(c *config) error {
		if d <= 0 {
			return fmt.Errorf("lock timeout %v: must be positive", d)
		}
		c.lockTimeout = d
		return nil
	}
}

// A Report is what one call of Up or Down did, including, when it failed,
// what it did before the failure. Calls for the same table are serialised,
// and each reports only its own work: of several processes running Up at
// once, one reports the versions applied.
type Report struct {
	// Applied lists the versions that this call of Up applied, oldest
	// first.
	Applied []int64
	// RolledBack lists the versions that this call of Down rolled back,
	// newest first.
	RolledBack []int64
	// Missing lists the tables that Up found missing although the version
	// table recorded their migrations as applied (a Down or an Up
	// interrupted halfway, a table dropped by hand). Up then ran those
	// migrations again; every migration is idempotent.
	Missing []string
}

// downLockWait bounds how long Down's DROP waits for the tables' metadata
// locks (lock_wait_timeout, whole seconds). A transaction that holds a key
// keeps the lock table's metadata lock until it ends, and every statement
// on the table that arrives after a waiting DROP queues behind it: a long
// wait would stall every locker of every key, not only the holder.
const downLockWait = 2 * time.Second

// MigrationStatus describes one embedded migration and whether the database
// has it.
type MigrationStatus struct {
	// Version is the migration's version, the number its file name starts
	// with.
	Version int64
	// Source is the migration's file name, e.g. "00001_create_tb_lock.sql".
	Source string
	// Applied reports whether the migration is applied.
	Applied bool
	// AppliedAt is when it was applied; the zero time when it is not.
	AppliedAt time.Time
}

// VersionTable returns the name of the table in which Up and Down record
// the versions applied to the lock table named table.
func VersionTable(table string) string {
	return table + schema.VersionTableSuffix
}

// FS returns the embedded migrations, as they are shipped: the files
// NNNNN_description.sql at the root of the returned file system, for the
// default table name "tb_lock". Give it to goose, or copy the files into
// another tool's migration directory.
func FS() fs.FS {
	sub, err := fs.Sub(sqlFiles, sqlDir)
	if err != nil {
		// sqlDir is a valid path known at compile time: fs.Sub cannot fail.
		panic(fmt.Sprintf("migrations: embedded %s directory: %v", sqlDir, err))
	}
	return sub
}

// Latest returns the highest embedded version: the version of a database
// on which Up has run.
func Latest() int64 {
	var latest int64
	for _, m := range mustSources() {
		latest = max(latest, m.version)
	}
	return latest
}

// Up applies every embedded migration that db does not have yet, in order,
// and reports what it applied. It is idempotent: on an up-to-date database
// it changes nothing. Whatever the version table records, Up checks that
// the lock and fence tables exist; when one is missing it runs the
// recorded migrations again, which creates what is missing and leaves what
// exists as it is.
func Up(ctx context.Context, db *sql.DB, opts ...Option) (Report, error) {
	cfg, err := newConfig(db, opts)
	if err != nil {
		return Report{}, err
	}
	m, err := newMigrator(db, cfg)
	if err != nil {
		return Report{}, err
	}
	missing, err := m.prepareUp(ctx, db)
	if err != nil {
		return Report{}, err
	}
	res, err := m.provider.Up(ctx)
	rep := Report{Applied: versions(res, err)}
	if len(rep.Applied) > 0 {
		rep.Missing = missing
	}
	if err != nil {
		return rep, fmt.Errorf("migrations: up %s: %w", cfg.table, err)
	}
	return rep, nil
}

// Down rolls back every applied migration, newest first, and reports what
// it rolled back: it drops the run, leader and session tables, then the
// lock and fence tables, with all locks and fencing counters in them, in
// one statement. The version table stays,
// recording that nothing is applied. Down on a database that was never
// migrated does nothing.
//
// A transaction that holds a key keeps the tables in use until it ends.
// Down waits at most 2 s for them (lock_wait_timeout), so that the lockers
// queued behind its DROP are not stalled for longer, and then fails with
// nothing dropped: stop the services that use the tables first.
func Down(ctx context.Context, db *sql.DB, opts ...Option) (Report, error) {
	cfg, err := newConfig(db, opts)
	if err != nil {
		return Report{}, err
	}
	exists, err := tableExists(ctx, db, VersionTable(cfg.table))
	if err != nil || !exists {
		return Report{}, err
	}
	m, err := newMigrator(db, cfg)
	if err != nil {
		return Report{}, err
	}
	m.locker.ddlLockWait = downLockWait
	res, err := m.provider.DownTo(ctx, 0)
	rep := Report{RolledBack: versions(res, err)}
	var me *gomysql.MySQLError
	switch {
	case errors.As(err, &me) && me.Number == erLockWaitTimeout:
		dropped := "nothing was dropped"
		if len(rep.RolledBack) > 0 {
			dropped = fmt.Sprintf("versions %v were rolled back before it (their tables are dropped; Up creates them again), the lock and fence tables were not dropped", rep.RolledBack)
		}
		return rep, fmt.Errorf("migrations: down %s: a transaction still uses %s or %s (one that holds a key keeps them in use until it ends); "+
			"%s: the DDL gave up after %v rather than stall every locker queued behind it; stop the services that use them and try again: %w",
			cfg.table, cfg.table, schema.FenceTable(cfg.table), dropped, downLockWait, err)
	case err != nil:
		return rep, fmt.Errorf("migrations: down %s: %w", cfg.table, err)
	}
	return rep, nil
}

// erLockWaitTimeout is the server's error for a lock wait, row or
// metadata, that ran out (1205).
const erLockWaitTimeout = 1205

// versions returns the versions of goose's results, including those run
// before a failure.
func versions(res []*goose.MigrationResult, err error) []int64 {
	var pe *goose.PartialError
	if errors.As(err, &pe) {
		res = pe.Applied
	}
	var out []int64
	for _, r := range res {
		if r != nil && r.Source != nil {
			out = append(out, r.Source.Version)
		}
	}
	return out
}

// Status lists the embedded migrations in version order and reports which
// of them db has. It only reads: on a database that was never migrated it
// reports every migration as pending and creates nothing.
func Status(ctx context.Context, db *sql.DB, opts ...Option) ([]MigrationStatus, error) {
	cfg, err := newConfig(db, opts)
	if err != nil {
		return nil, err
	}
	sources, err := embeddedSources()
	if err != nil {
		return nil, err
	}
	applied, err := appliedVersions(ctx, db, VersionTable(cfg.table))
	if err != nil {
		return nil, err
	}
	out := make([]MigrationStatus, 0, len(sources))
	for _, s := range sources {
		st := MigrationStatus{Version: s.version, Source: s.name}
		if at, ok := applied[s.version]; ok {
			st.Applied = true
			st.AppliedAt = at
		}
		out = append(out, st)
	}
	return out, nil
}

// newConfig checks db and applies opts over the defaults.
func newConfig(db *sql.DB, opts []Option) (*config, error) {
	if db == nil {
		return nil, errors.New("migrations: nil *sql.DB")
	}
	cfg := &config{table: schema.DefaultTable, lockTimeout: defaultLockTimeout}
	for _, opt := range opts {
		if opt == nil {
			continue
		}
		if err := opt(cfg); err != nil {
			return nil, fmt.Errorf("migrations: %w", err)
		}
	}
	return cfg, nil
}

// migrator is a goose provider for the migrations of one lock table, with
// the pieces it was built from.
type migrator struct {
	table    string
	provider *goose.Provider
	store    database.Store
	locker   *sessionLocker
}

// newMigrator returns a migrator for cfg.table.
func newMigrator(db *sql.DB, cfg *config) (*migrator, error) {
	fsys, err := render(cfg.table)
	if err != nil {
		return nil, err
	}
	store, err := database.NewStore(database.DialectMySQL, VersionTable(cfg.table))
	if err != nil {
		return nil, fmt.Errorf("migrations: version store: %w", err)
	}
	locker := &sessionLocker{table: cfg.table, timeout: cfg.lockTimeout}
	opts := []goose.ProviderOption{
		goose.WithStore(store),
		// Only our SQL files: never Go migrations that the application
		// registered with goose for its own schema.
		goose.WithDisableGlobalRegistry(true),
		goose.WithSessionLocker(locker),
	}
	if cfg.logger != nil {
		opts = append(opts, goose.WithVerbose(true), goose.WithSlog(cfg.logger))
	}
	p, err := goose.NewProvider(goose.DialectCustom, db, fsys, opts...)
	if err != nil {
		return nil, fmt.Errorf("migrations: %w", err)
	}
	return &migrator{table: cfg.table, provider: p, store: store, locker: locker}, nil
}

// Tables returns the tables that Up creates for the lock table named table,
// in the order the migrations create them: the lock table, its fence
// table, and the run, leader and session tables.
func Tables(table string) []string {
	return []string{table, schema.FenceTable(table), schema.RunTable(table), schema.LeaderTable(table), schema.SessionTable(table), schema.PermitTable(table)}
}

// withLock runs fn on a connection of db that holds the table's migration
// lock.
func (m *migrator) withLock(ctx context.Context, db *sql.DB, op string, fn func(conn *sql.Conn) error) (err error) {
	conn, err := db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("migrations: %s %s: %w", op, m.table, err)
	}
	defer func() {
		if cerr := conn.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("migrations: %s %s: %w", op, m.table, cerr)
		}
	}()
	if err := m.locker.SessionLock(ctx, conn); err != nil {
		return fmt.Errorf("migrations: %s %s: %w", op, m.table, err)
	}
	defer func() {
		if uerr := m.locker.SessionUnlock(context.WithoutCancel(ctx), conn); uerr != nil && err == nil {
			err = fmt.Errorf("migrations: %s %s: %w", op, m.table, uerr)
		}
	}()
	return fn(conn)
}

// prepareUp readies the version table for goose's Up, under the migration
// lock, and returns the tables it found missing although recorded.
//
// It creates the version table, with goose's version-0 row, unless it
// exists. goose would create it too, but outside its session lock (in
// HasPending), where a concurrent Up could see the table before its
// version-0 row and fail.
//
// When the version table records migrations but a table they create is
// missing, it deletes those records, so that goose runs the migrations
// again (every migration is idempotent). goose alone would see nothing
// pending and leave the tables missing.
func (m *migrator) prepareUp(ctx context.Context, db *sql.DB) (missing []string, err error) {
	err = m.withLock(ctx, db, "up", func(conn *sql.Conn) error {
		vt := m.store.Tablename()
		exists, err := tableExists(ctx, conn, vt)
		if err != nil {
			return err
		}
		if !exists {
			if err := m.store.CreateVersionTable(ctx, conn); err != nil {
				return fmt.Errorf("migrations: up %s: creating %s: %w", m.table, vt, err)
			}
			if err := m.store.Insert(ctx, conn, database.InsertRequest{Version: 0}); err != nil {
				return fmt.Errorf("migrations: up %s: initialising %s: %w", m.table, vt, err)
			}
			return nil
		}
		recorded, err := m.store.ListMigrations(ctx, conn)
		if err != nil {
			return fmt.Errorf("migrations: up %s: reading %s: %w", m.table, vt, err)
		}
		var applied []int64
		for _, r := range recorded {
			if r.Version > 0 && r.IsApplied {
				applied = append(applied, r.Version)
			}
		}
		if len(applied) == 0 {
			return nil
		}
		for _, t := range Tables(m.table) {
			ok, err := tableExists(ctx, conn, t)
			if err != nil {
				return err
			}
			if !ok {
				missing = append(missing, t)
			}
		}
		if len(missing) == 0 {
			return nil
		}
		for _, v := range applied {
			if err := m.store.Delete(ctx, conn, v); err != nil {
				return fmt.Errorf("migrations: up %s: %s missing: forgetting version %d in %s to run it again: %w",
					m.table, strings.Join(missing, " and "), v, vt, err)
			}
		}
		return nil
	})
	return missing, err
}

// source is one embedded migration file.
type source struct {
	version int64
	name    string // base name, e.g. 00001_create_tb_lock.sql
}

// embeddedSources lists the embedded migrations in version order.
func embeddedSources() ([]source, error) {
	names, err := fs.Glob(sqlFiles, sqlDir+"/*.sql")
	if err != nil {
		return nil, fmt.Errorf("migrations: listing embedded SQL: %w", err)
	}
	out := make([]source, 0, len(names))
	for _, n := range names {
		base := path.Base(n)
		v, err := goose.NumericComponent(base)
		if err != nil {
			return nil, fmt.Errorf("migrations: embedded file %s: %w", base, err)
		}
		out = append(out, source{version: v, name: base})
	}
	slices.SortFunc(out, func(a, b source) int { return cmp.Compare(a.version, b.version) })
	return out, nil
}

// mustSources is embeddedSources for callers that cannot return an error:
// the embedded files are fixed at compile time and covered by tests.
func mustSources() []source {
	s, err := embeddedSources()
	if err != nil {
		panic(err)
	}
	return s
}

// render returns the embedded migrations with every identifier renamed for
// the lock table table, at the root of an in-memory file system.
func render(table string) (fs.FS, error) {
	sources, err := embeddedSources()
	if err != nil {
		return nil, err
	}
	out := make(fstest.MapFS, len(sources))
	for _, s := range sources {
		b, err := fs.ReadFile(sqlFiles, path.Join(sqlDir, s.name))
		if err != nil {
			return nil, fmt.Errorf("migrations: reading embedded %s: %w", s.name, err)
		}
		text := string(b)
		if table != schema.DefaultTable {
			text = strings.ReplaceAll(text, schema.DefaultTable, table)
		}
		out[s.name] = &fstest.MapFile{Data: []byte(text), Mode: 0o444}
	}
	return out, nil
}

// queryRower is what tableExists needs of a *sql.DB or *sql.Conn.
type queryRower interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// tableExists reports whether the current database has a table named name.
func tableExists(ctx context.Context, db queryRower, name string) (bool, error) {
	var current sql.NullString
	var n int
	err := db.QueryRowContext(ctx,
		`SELECT DATABASE(), (SELECT COUNT(*) FROM information_schema.tables
		  WHERE table_schema = DATABASE() AND table_name = ?)`, name).Scan(&current, &n)
	if err != nil {
		return false, fmt.Errorf("migrations: looking up table %s: %w", name, err)
	}
	if !current.Valid {
		return false, errors.New("migrations: no database selected: name one in the DSN, e.g. root@tcp(127.0.0.1:3306)/test")
	}
	return n > 0, nil
}

// appliedVersions returns the versions recorded as applied in the goose
// version table vt, with the time each was applied. A missing table means
// that nothing is applied. The time is read as a Unix timestamp so that
// neither the DSN's parseTime nor the session's time zone matter.
func appliedVersions(ctx context.Context, db *sql.DB, vt string) (map[int64]time.Time, error) {
	exists, err := tableExists(ctx, db, vt)
	if err != nil || !exists {
		return nil, err
	}
	// vt passed schema.ValidTableName (plus a fixed suffix): safe to quote.
	rows, err := db.QueryContext(ctx,
		"SELECT version_id, is_applied, COALESCE(UNIX_TIMESTAMP(tstamp), 0) FROM `"+vt+"` ORDER BY id")
	if err != nil {
		return nil, fmt.Errorf("migrations: reading %s: %w", vt, err)
	}
	defer rows.Close()
	applied := make(map[int64]time.Time)
	for rows.Next() {
		var (
			version   int64
			isApplied bool
			unix      int64
		)
		if err := rows.Scan(&version, &isApplied, &unix); err != nil {
			return nil, fmt.Errorf("migrations: reading %s: %w", vt, err)
		}
		if version == 0 {
			continue // goose's marker row, not a migration
		}
		if isApplied {
			applied[version] = time.Unix(unix, 0).UTC()
		} else {
			delete(applied, version)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("migrations: reading %s: %w", vt, err)
	}
	return applied, nil
}
