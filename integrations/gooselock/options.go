package gooselock

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/schema"
)

// DefaultOperation names the key a Locker holds unless the Key option
// says otherwise, dblock.Operation(DefaultOperation): every goose run on
// the database, whatever its migrations, waits for the others. Operators
// find it under this name (txlock locks, txlock release).
const DefaultOperation = "goose-migrations"

// DefaultWaitTimeout is how long Lock waits for another holder unless the
// WaitTimeout option or an earlier context deadline says otherwise: the
// 5 minutes goose's own Postgres lockers retry for.
const DefaultWaitTimeout = 5 * time.Minute

// An Option configures a Locker. Options are validated by New.
type Option func(*config) error

type config struct {
	key    dblock.Key
	wait   time.Duration
	lease  time.Duration // 0: dblock's default
	table  string
	logger *slog.Logger // nil: log nothing
}

// Key sets the key the Locker holds (default
// dblock.Operation(DefaultOperation)). Goose runs that
// must exclude each other use the same key; runs under different keys (two
// services migrating their own tables in one database) do not wait for
// each other.
func Key(k dblock.Key) Option {
	return func(c *config) error {
		if err := k.Validate(); err != nil {
			return fmt.Errorf("gooselock: Key: %w", err)
		}
		c.key = k
		return nil
	}
}

// WaitTimeout bounds how long Lock waits while another goose run holds the
// lock (default DefaultWaitTimeout). A context deadline passed to Lock
// bounds the wait too, whichever comes first.
func WaitTimeout(d time.Duration) Option {
	return func(c *config) error {
		if d <= 0 {
			return fmt.Errorf("gooselock: WaitTimeout must be positive, got %v", d)
		}
		c.wait = d
		return nil
	}
}

// Lease bounds how long the lock outlives a holder that stopped talking to
// the server (a silent network partition, a frozen process), at least 1 s;
// by default dblock's (60 s). A holder whose process dies or whose
// connection closes releases at once, whatever the lease. See
// dblock.Lease.
func Lease(d time.Duration) Option {
	return func(c *config) error {
		if d < time.Second {
			return fmt.Errorf("gooselock: Lease must be at least 1s, got %v", d)
		}
		c.lease = d
		return nil
	}
}

// Table sets the name of txlock's lock table (default "tb_lock"), created
// by Lock when it is missing.
func Table(name string) Option {
	return func(c *config) error {
		if err := schema.ValidTableName(name); err != nil {
			return fmt.Errorf("gooselock: Table: %w", err)
		}
		c.table = name
		return nil
	}
}

// Logger sets the logger of events worth an operator's attention: above
// all a lock lost while goose was running (at level Error), and the
// creation of the lock table. By default nothing is logged; a loss is
// reported by Unlock's error all the same.
func Logger(l *slog.Logger) Option {
	return func(c *config) error {
		if l == nil {
			return errors.New("gooselock: Logger: nil *slog.Logger")
		}
		c.logger = l
		return nil
	}
}
