// Package linearize checks that the committed effect of read-modify-write
// increments made under a lock is linearizable.
//
// Each operation increments a counter (one per key) the way a careless
// holder would: it reads n inside the lock's transaction, computes n+1 in
// Go and writes it back. With mutual exclusion and fresh reads, the
// committed increments of a key form one chain initial, initial+1, ...,
// final, in an order compatible with real time (an increment that began
// after another returned must come after it). A lost update (two committed
// increments that read the same n) or a stale read (an increment that
// began after another had returned, yet read a value no newer than that
// one's) breaks it.
//
// Operations are recorded client-side with a [Recorder]: the call time
// (before the acquisition), the value read, the return time and the
// outcome: [Committed], [NotCommitted] (certainly: the transaction was
// rolled back or never reached COMMIT) or [Unknown] (a connection lost
// around COMMIT: the write may or may not have taken effect). [Check] runs
// the porcupine checker (github.com/anishathalye/porcupine) over a counter
// model, in which an operation of unknown outcome may have taken effect or
// not, and explains a failure in the history's own terms: the values read
// twice, the stale reads and the operations involved.
package linearize

import (
	"slices"
	"strconv"
	"sync"
	"time"
)

// Outcome is what became of an operation's write.
type Outcome uint8

// Outcomes. Classify honestly: only a COMMIT that returned success is
// Committed; only an error that proves the write was not committed (the
// operation never reached COMMIT, a deadlock or certification failure that
// rolled the transaction back, a write refused by the snapshot guard) is
// NotCommitted; anything in doubt, above all a connection lost while
// COMMIT was in flight, is Unknown.
const (
	Committed    Outcome = iota + 1 // the write of Read+1 is committed
	NotCommitted                    // certainly not committed
	Unknown                         // may or may not have been committed
)

// String returns "committed", "not committed" or "unknown".
func (o Outcome) String() string {
	switch o {
	case Committed:
		return "committed"
	case NotCommitted:
		return "not committed"
	case Unknown:
		return "unknown"
	}
	return "outcome(" + strconv.Itoa(int(o)) + ")"
}

// An Op is one increment of the counter of Key: it read Read (when HasRead)
// inside the lock's transaction and wrote Read+1, with the given Outcome.
// Call is taken before the acquisition starts and Return after the
// operation's last statement (COMMIT, or the error) returned, on the
// client; within one process use time.Now (monotonic), across processes
// on one host the wall clock.
type Op struct {
	Key     string
	Client  int    // the worker that ran it (a goroutine, a process's goroutine): >= 0
	Path    string // how the lock was taken ("Do", "Lock", "LockTx", ...)
	Node    string // which server it went to, when there are several
	Call    time.Time
	Return  time.Time
	Read    int64 // the value read under the lock, when HasRead
	HasRead bool  // false: the operation never read the counter, so it never wrote
	Outcome Outcome
	Err     string // the error the operation returned, if any
}

// A Recorder collects operations from many goroutines.
type Recorder struct {
	mu  sync.Mutex
	ops []Op
}

// Begin starts an operation on key by client through path (and node):
// call it just before the acquisition. Call Read on the returned Pending
// once the value is read, and End when the operation has returned.
func (r *Recorder) Begin(key string, client int, path, node string) *Pending {
	return &Pending{r: r, op: Op{Key: key, Client: client, Path: path, Node: node, Call: time.Now()}}
}

// Add records a finished operation (from another process, say).
func (r *Recorder) Add(op Op) {
	r.mu.Lock()
	r.ops = append(r.ops, op)
	r.mu.Unlock()
}

// Ops returns a copy of the operations recorded so far.
func (r *Recorder) Ops() []Op {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.ops)
}

// A Pending is an operation in progress, begun by Recorder.Begin. It is
// used by one goroutine at a time.
type Pending struct {
	r     *Recorder
	op    Op
	ended bool
}

// Read records the value the operation read under the lock (the value it
// computes its write from). A later call replaces it: an operation that
// runs its work again (a retry) records its last read.
func (p *Pending) Read(v int64) {
	p.op.Read, p.op.HasRead = v, true
}

// End records the operation's return, with its outcome and the error it
// returned (nil for none). A second End is ignored.
func (p *Pending) End(o Outcome, err error) Op {
	if p.ended {
		return p.op
	}
	p.ended = true
	p.op.Return = time.Now()
	p.op.Outcome = o
	if err != nil {
		p.op.Err = err.Error()
	}
	p.r.Add(p.op)
	return p.op
}
