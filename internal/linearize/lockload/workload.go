// Package lockload is the workload of the linearizability checks of
// txlock's lock: read-modify-write increments of counter rows under a
// dblock lock, through every public path (Do, Lock and Commit, LockTx in a
// transaction that read before locking, decorator.WithLock, DoMulti), each
// recorded for package linearize with an honest outcome. It uses dblock's
// public API only, so that the dblock tests and the HA tests (Galera) run
// the same workload.
package lockload

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/decorator"
	"github.com/txlock/txlock/internal/linearize"
)

// A Path is a public way to take the lock.
type Path string

// The paths.
const (
	Do        Path = "Do"                // Locker.Do, fn's tx
	Lock      Path = "Lock"              // Locker.Lock, Lock.Tx, Lock.Commit
	LockTx    Path = "LockTx"            // the caller's transaction: LockTx first, then the increment
	ReadFirst Path = "LockTx-after-read" // the caller's transaction reads the counter, then LockTx: refused (ErrStaleSnapshot) on MariaDB
	Decorator Path = "decorator.WithLock"
	DoMulti   Path = "DoMulti" // two keys, both counters incremented
)

// AllPaths lists every path.
var AllPaths = []Path{Do, Lock, LockTx, ReadFirst, Decorator, DoMulti}

// Counters names the counter rows: row i of Table (id INT primary key, v
// BIGINT) is guarded by the lock key Prefix+i.
type Counters struct {
	Table  string
	Prefix string
	N      int
}

// Key returns the lock key of counter i.
func (c Counters) Key(i int) dblock.Key { return dblock.Resource(c.Prefix + strconv.Itoa(i)) }

// Name returns counter i's name in histories (its lock key's resource).
func (c Counters) Name(i int) string { return c.Prefix + strconv.Itoa(i) }

// Columns are the columns of the counter table.
const Columns = "id INT NOT NULL PRIMARY KEY, v BIGINT NOT NULL"

// Create creates the table with N rows at 0 (the table must not exist).
func (c Counters) Create(ctx context.Context, db *sql.DB) error {
	if _, err := db.ExecContext(ctx, "CREATE TABLE `"+c.Table+"` ("+Columns+") ENGINE=InnoDB"); err != nil {
		return fmt.Errorf("lockload: creating %s: %w", c.Table, err)
	}
	return c.Fill(ctx, db)
}

// Fill inserts the N rows at 0 into the (empty) table.
func (c Counters) Fill(ctx context.Context, db *sql.DB) error {
	for i := range c.N {
		if _, err := db.ExecContext(ctx, "INSERT INTO `"+c.Table+"` (id, v) VALUES (?, 0)", i); err != nil {
			return fmt.Errorf("lockload: filling %s: %w", c.Table, err)
		}
	}
	return nil
}

// Final reads every counter through q (in autocommit), keyed by Name.
func (c Counters) Final(ctx context.Context, q interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}) (map[string]int64, error) {
	out := make(map[string]int64, c.N)
	for i := range c.N {
		var v int64
		if err := q.QueryRowContext(ctx, "SELECT v FROM `"+c.Table+"` WHERE id = ?", i).Scan(&v); err != nil {
			return nil, fmt.Errorf("lockload: reading counter %d: %w", i, err)
		}
		out[c.Name(i)] = v
	}
	return out, nil
}

// Mix is how a worker picks its operations.
type Mix struct {
	Paths []Path // picked uniformly (AllPaths when empty)
	// NoWait is the probability of NoWait; WaitP the probability that
	// another gets a random WaitTimeout in the range Wait.
	NoWait float64
	WaitP  float64
	Wait   [2]time.Duration
	// Deadline is the range of a random context deadline for the whole
	// operation (it may run out while holding); MaxOp bounds every
	// operation otherwise.
	Deadline [2]time.Duration
	// DeadlineP is the probability that an operation gets a random
	// deadline from Deadline.
	DeadlineP float64
	MaxOp     time.Duration
	// Hold is the range of a server-side sleep between the read and the
	// write (a tagged statement the Killer finds).
	Hold [2]time.Duration
	// Extra options for every acquisition.
	Extra []dblock.LockOption
}

// A Worker runs operations on one Locker (one process, one node).
type Worker struct {
	Locker   *dblock.Locker
	DB       *gorm.DB // the pool the Locker was made on
	Counters Counters
	Client   int    // this worker's id in histories
	Node     string // where its connections go, for explanations
	Tag      string // marks its hold statements (the Killer's HoldTag)
	Rec      *linearize.Recorder
	Stats    *Stats
	Rng      *rand.Rand
}

// Loop runs random operations of mix until stop or ctx ends.
func (w *Worker) Loop(ctx context.Context, stop time.Time, mix Mix) {
	paths := mix.Paths
	if len(paths) == 0 {
		paths = AllPaths
	}
	for time.Now().Before(stop) && ctx.Err() == nil {
		w.Once(ctx, w.Step(paths[w.Rng.IntN(len(paths))], mix))
	}
}

// A Step is one operation.
type Step struct {
	Path     Path
	Keys     []int // counters: one, two for DoMulti
	Opts     []dblock.LockOption
	Deadline time.Duration // of the operation's context; 0: none
	Hold     time.Duration
}

// Step draws a random step of path from mix.
func (w *Worker) Step(path Path, mix Mix) Step {
	s := Step{Path: path, Keys: []int{w.Rng.IntN(w.Counters.N)}, Opts: slices.Clone(mix.Extra)}
	if path == DoMulti && w.Counters.N > 1 {
		j := w.Rng.IntN(w.Counters.N - 1)
		if j >= s.Keys[0] {
			j++
		}
		s.Keys = append(s.Keys, j)
	}
	switch {
	case w.Rng.Float64() < mix.NoWait:
		s.Opts = append(s.Opts, dblock.NoWait())
	case w.Rng.Float64() < mix.WaitP && mix.Wait[1] > 0:
		s.Opts = append(s.Opts, dblock.WaitTimeout(between(w.Rng, mix.Wait)))
	}
	if w.Rng.Float64() < mix.DeadlineP && mix.Deadline[1] > 0 {
		s.Deadline = between(w.Rng, mix.Deadline)
	} else {
		s.Deadline = mix.MaxOp
	}
	s.Hold = between(w.Rng, mix.Hold)
	return s
}

func between(rng *rand.Rand, r [2]time.Duration) time.Duration {
	if r[1] <= r[0] {
		return r[0]
	}
	return r[0] + time.Duration(rng.Int64N(int64(r[1]-r[0])))
}

// Once runs s and records it: one operation per counter it increments.
func (w *Worker) Once(ctx context.Context, s Step) {
	if s.Deadline > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.Deadline)
		defer cancel()
	}
	ps := make([]*linearize.Pending, len(s.Keys))
	for i, k := range s.Keys {
		ps[i] = w.Rec.Begin(w.Counters.Name(k), w.Client, string(s.Path), w.Node)
	}
	var ran bool  // the work under the lock started
	var done bool // and finished without error: what follows is the commit
	work := func(ctx context.Context, tx *gorm.DB) error {
		ran = true
		for i, k := range s.Keys {
			if err := w.increment(ctx, tx, k, ps[i], s.Hold); err != nil {
				return err
			}
		}
		done = true
		return nil
	}
	var err error
	switch s.Path {
	case Do:
		err = w.Locker.Do(ctx, w.Counters.Key(s.Keys[0]), work, s.Opts...)
	case DoMulti:
		keys := make([]dblock.Key, len(s.Keys))
		for i, k := range s.Keys {
			keys[i] = w.Counters.Key(k)
		}
		err = w.Locker.DoMulti(ctx, keys, work, s.Opts...)
	case Decorator:
		type req struct{ k int }
		f := decorator.WithLock(w.Locker,
			func(_ context.Context, r req) dblock.Key { return w.Counters.Key(r.k) },
			func(ctx context.Context, r req) (struct{}, error) {
				// The repository's way: the transaction in ctx, the pool
				// otherwise (which would be a bug of the decorator, and an
				// increment outside the lock that the check would catch).
				return struct{}{}, work(ctx, dblock.DB(ctx, w.DB))
			}, s.Opts...)
		_, err = f(ctx, req{s.Keys[0]})
	case Lock:
		err = w.lockCommit(ctx, s, work)
	case LockTx:
		err = w.lockTx(ctx, s, work, false)
	case ReadFirst:
		err = w.lockTx(ctx, s, work, true)
	default:
		err = fmt.Errorf("lockload: unknown path %q", s.Path)
	}
	outcome := linearize.NotCommitted
	switch {
	case err == nil:
		outcome = linearize.Committed
	case ran && done:
		outcome = CommitOutcome(err)
	}
	for _, p := range ps {
		p.End(outcome, err)
	}
	w.Stats.Add(s.Path, outcome, err)
}

// lockCommit is the Lock path: Lock, the work through Tx, Commit (Rollback
// when the work failed).
func (w *Worker) lockCommit(ctx context.Context, s Step, work func(context.Context, *gorm.DB) error) error {
	k, err := w.Locker.Lock(ctx, w.Counters.Key(s.Keys[0]), s.Opts...)
	if err != nil {
		return err
	}
	if err := work(k.Context(ctx), k.Tx()); err != nil {
		_ = k.Rollback()
		return err
	}
	return k.Commit()
}

// lockTx is the LockTx path: the caller's transaction reads the counter
// before it locks (its snapshot may then predate the previous holder's
// commit), takes the lock with LockTx, does the work and commits.
func (w *Worker) lockTx(ctx context.Context, s Step, work func(context.Context, *gorm.DB) error, readFirst bool) error {
	tx := w.DB.WithContext(ctx).Begin()
	if tx.Error != nil {
		return tx.Error
	}
	if readFirst {
		var before int64
		if err := tx.Raw("SELECT v FROM `"+w.Counters.Table+"` WHERE id = ?", s.Keys[0]).Row().Scan(&before); err != nil {
			tx.Rollback()
			return fmt.Errorf("lockload: the read before the lock: %w", err)
		}
	}
	if err := w.Locker.LockTx(ctx, tx, w.Counters.Key(s.Keys[0]), s.Opts...); err != nil {
		tx.Rollback()
		return err
	}
	if err := work(dblock.WithTx(ctx, tx), tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit().Error
}

// increment reads counter k in tx, holds, and writes the value read plus
// one, computed here (a lost update without mutual exclusion and fresh
// reads).
func (w *Worker) increment(ctx context.Context, tx *gorm.DB, k int, p *linearize.Pending, hold time.Duration) error {
	tx = tx.WithContext(ctx)
	var v int64
	if err := tx.Raw("SELECT v FROM `"+w.Counters.Table+"` WHERE id = ?", k).Row().Scan(&v); err != nil {
		return err
	}
	p.Read(v)
	if hold > 0 {
		if err := tx.Exec("DO /*"+w.Tag+"*/ SLEEP(?)", hold.Seconds()).Error; err != nil {
			return err
		}
	}
	return tx.Exec("UPDATE `"+w.Counters.Table+"` SET v = ? WHERE id = ?", v+1, k).Error
}

// CommitOutcome classifies the error of an operation whose work under the
// lock finished, so that the error came from ending the transaction (or
// from the loss of the lock just before): certainly not committed when the
// server rolled the transaction back (a deadlock or, on Galera, a
// certification failure: 1213, ErrDeadlock) or refused a stale write
// (1020, ErrStaleSnapshot); otherwise unknown, since COMMIT may have been
// sent and applied before the connection failed.
func CommitOutcome(err error) linearize.Outcome {
	switch {
	case err == nil:
		return linearize.Committed
	case errors.Is(err, dblock.ErrDeadlock), errors.Is(err, dblock.ErrStaleSnapshot):
		return linearize.NotCommitted
	}
	switch mysqlNumber(err) {
	case 1213, 1020:
		return linearize.NotCommitted
	}
	return linearize.Unknown
}
