package main

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"strings"

	gomysql "github.com/go-sql-driver/mysql"
	"github.com/spf13/cobra"

	"github.com/txlock/txlock/schema"
)

// envDSN is the environment variable that --dsn defaults to.
const envDSN = "DBLOCK_DSN"

// defaultDSN is the server used when neither --dsn nor $DBLOCK_DSN is set.
const defaultDSN = "root@tcp(127.0.0.1:3306)/test"

// rootOptions holds the flags that every command shares.
type rootOptions struct {
	getenv func(string) string
	dsn    string
	table  string

	// passwd is the password of the DSN in use, once known, so that no
	// message ever shows it.
	passwd string
}

// newRootCmd returns the txlock command with all its subcommands, and the
// options that its flags fill in.
func newRootCmd(getenv func(string) string) (*cobra.Command, *rootOptions) {
	opts := &rootOptions{getenv: getenv}
	cmd := &cobra.Command{
		Use:   "txlock",
		Short: "Operate the tables of txlock, the MySQL/MariaDB lock library",
		Long: `txlock operates the tables of txlock, the distributed lock library on
MySQL and MariaDB: it creates, drops and inspects them (migrate), shows who
holds and who waits for which key (locks), deletes old key rows (gc), checks
the server (doctor), ends a stuck holder's connection (release) and shows or
switches whether the table's keys contain each other (hierarchy).

The server is named by --dsn, else by $` + envDSN + `, else it is
` + defaultDSN + `. The commands that destroy something (release, gc
without --dry-run, migrate down) never fall back to that default: they need
--dsn or $` + envDSN + `, naming a database, and say which server and
database they act on. DSNs use the go-sql-driver/mysql format:
user:password@tcp(host:port)/database. Passwords are never printed.`,
		Example: `  export ` + envDSN + `='app:secret@tcp(db.internal:3306)/orders'
  txlock migrate up
  txlock migrate status --table tb_lock
  txlock doctor
  txlock locks --watch`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(*cobra.Command, []string) error {
			if err := schema.ValidTableName(opts.table); err != nil {
				return fmt.Errorf("--table: %w", err)
			}
			return nil
		},
	}
	f := cmd.PersistentFlags()
	// The flag's default stays empty so that --help never prints a
	// password taken from the environment.
	f.StringVar(&opts.dsn, "dsn", "", "server DSN, user:password@tcp(host:port)/database (default $"+envDSN+", else "+defaultDSN+")")
	f.StringVar(&opts.table, "table", schema.DefaultTable, "name of the lock table; its fence and version tables are named after it")
	cmd.AddCommand(newMigrateCmd(opts), newLocksCmd(opts), newGCCmd(opts), newDoctorCmd(opts), newReleaseCmd(opts), newHierarchyCmd(opts))
	return cmd, opts
}

// resolvedDSN returns the DSN to use: --dsn, else $DBLOCK_DSN, else
// defaultDSN.
func (o *rootOptions) resolvedDSN() string {
	if o.dsn != "" {
		return o.dsn
	}
	if v := o.getenv(envDSN); v != "" {
		return v
	}
	return defaultDSN
}

// requireDSN refuses to let the destructive command what guess its
// server: it needs --dsn or $DBLOCK_DSN, and the DSN must name a database.
func (o *rootOptions) requireDSN(what string) error {
	if o.dsn == "" && o.getenv(envDSN) == "" {
		return fmt.Errorf("%s destroys data, so it does not fall back to %s: name the server with --dsn or $%s", what, defaultDSN, envDSN)
	}
	cfg, err := gomysql.ParseDSN(o.resolvedDSN())
	if err != nil {
		return fmt.Errorf("parsing the DSN: %w", err)
	}
	if cfg.DBName == "" {
		return fmt.Errorf("%s: the DSN names no database: add it, e.g. user:password@tcp(host:3306)/database", what)
	}
	return nil
}

// open connects to the server, with parseTime=true, and returns the
// database and a printable (password-free) description of the server.
func (o *rootOptions) open(ctx context.Context) (*sql.DB, string, error) {
	cfg, err := gomysql.ParseDSN(o.resolvedDSN())
	if err != nil {
		return nil, "", fmt.Errorf("parsing the DSN: %w", err)
	}
	o.passwd = cfg.Passwd
	cfg.ParseTime = true
	conn, err := gomysql.NewConnector(cfg)
	if err != nil {
		return nil, "", fmt.Errorf("DSN: %w", err)
	}
	where := fmt.Sprintf("%s@%s(%s)/%s", cfg.User, cfg.Net, cfg.Addr, cfg.DBName)
	db := sql.OpenDB(conn)
	if err := db.PingContext(ctx); err != nil {
		_ = db.Close()
		return nil, "", fmt.Errorf("connecting to %s: %w", where, err)
	}
	return db, where, nil
}

// withDB opens the database, runs fn on it and closes it; an error of Close
// is returned with fn's.
func (o *rootOptions) withDB(ctx context.Context, fn func(db *sql.DB, where string) error) (err error) {
	db, where, err := o.open(ctx)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, db.Close()) }()
	return fn(db, where)
}

// withServer is withDB for the commands that depend on the server's
// flavour: fn also gets what detectServer learned.
func (o *rootOptions) withServer(ctx context.Context, fn func(db *sql.DB, where string, srv serverInfo) error) error {
	return o.withDB(ctx, func(db *sql.DB, where string) error {
		srv, err := detectServer(ctx, db)
		if err != nil {
			return err
		}
		return fn(db, where, srv)
	})
}

// A console is what a destructive command works with: the inspector of
// its table, stdout for what it found and did, stderr for warnings and
// questions, stdin for the answers.
type console struct {
	in    *inspector
	out   io.Writer
	log   io.Writer
	stdin *bufio.Reader
}

// confirm asks question on the log and reports whether stdin answers y or
// yes; no answer (stdin closed) is no.
func (c *console) confirm(question string) bool {
	fmt.Fprint(c.log, question+" [y/N] ")
	answer, _ := c.stdin.ReadString('\n')
	a := strings.ToLower(strings.TrimSpace(answer))
	return a == "y" || a == "yes"
}

// destructive runs fn for the destructive command what (its name, for
// messages) on the server that --dsn or $DBLOCK_DSN names (see requireDSN),
// with a console on cmd's streams.
func (o *rootOptions) destructive(cmd *cobra.Command, what string, fn func(ctx context.Context, c *console) error) error {
	if err := o.requireDSN(what); err != nil {
		return err
	}
	ctx := cmd.Context()
	return o.withServer(ctx, func(db *sql.DB, where string, srv serverInfo) error {
		return fn(ctx, &console{
			in:    &inspector{db: db, srv: srv, table: o.table, where: where},
			out:   cmd.OutOrStdout(),
			log:   cmd.ErrOrStderr(),
			stdin: bufio.NewReader(cmd.InOrStdin()),
		})
	})
}

// scrub removes the DSN's password from msg, in case an error quotes it.
func (o *rootOptions) scrub(msg string) string {
	if o.passwd == "" {
		return msg
	}
	return strings.ReplaceAll(msg, o.passwd, "xxxxx")
}
