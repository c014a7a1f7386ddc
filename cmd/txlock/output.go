package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"
)

// A Conn is a connection that holds or waits for a key.
type Conn struct {
	ID   int64  `json:"connection_id"`
	User string `json:"user"`
	Host string `json:"host"`
	DB   string `json:"db,omitempty"`
	// Label is the Label of the txlock Locker that first locked on the
	// connection (the session table; rows of a past server run are
	// ignored); "" when unknown.
	Label string `json:"label,omitempty"`
	// TrxID is its transaction's id; "" for a transaction that has written
	// nothing on MariaDB, which gives all of those the id 0.
	TrxID string `json:"trx_id,omitempty"`
	// Mode is the mode of the lock a holder holds, or a waiter asks for:
	// "X" (exclusive), "S" (shared) or "SEM" (a permit of a semaphore);
	// "" for a candidate.
	Mode string `json:"mode,omitempty"`
	// PermitSlot is the slot of the permit a semaphore's holder holds, or
	// its waiter waits for (0 to permits-1); nil for a key's lock.
	PermitSlot *int   `json:"permit_slot,omitempty"`
	Cmd        string `json:"command,omitempty"` // PROCESSLIST COMMAND: Sleep (idle), Query...
	State      string `json:"state,omitempty"`
	// TrxAge is how long its transaction has been open, in whole seconds
	// (INNODB_TRX.trx_started has no fraction); nil: unknown.
	TrxAge *int64 `json:"trx_open_seconds,omitempty"`
	// Idle is how long a holder has been idle (COMMAND Sleep), seconds.
	Idle *float64 `json:"idle_seconds,omitempty"`
	// Waited is how long a waiter has waited (its statement's time), seconds.
	Waited *float64 `json:"waited_seconds,omitempty"`
	// Rows is the number of rows its transaction has locked (candidates only).
	Rows int64 `json:"rows_locked,omitempty"`
}

// A HeldKey is one key of the table that is held or waited for.
type HeldKey struct {
	Key    keyJSON `json:"key"`
	KeyStr string  `json:"key_string"`
	RowID  int64   `json:"row_id"`
	// Holder is nil when the key is held but its holder is not visible, or
	// not proven to hold it still (MariaDB's cached views may be old);
	// else the first of Holders.
	Holder *Conn `json:"holder"`
	// Holders are the holders shown: one, or for a key held shared, each
	// shared holder named.
	Holders []Conn `json:"holders,omitempty"`
	// Mode is how the key is held: "X" (exclusively), "S" (shared, maybe
	// by several transactions), "SEM" (permits of the key's semaphore,
	// dblock.Permits: apart from the key's lock, listed on its own), ""
	// when unknown (holder "?").
	Mode string `json:"mode,omitempty"`
	// Permits is a semaphore's number of permits, PermitsHeld how many of
	// them are held: Holders names their holders, those it cannot name
	// are "?" (PermitsHeld - len(Holders)). KeyHash is the key's hash (the
	// permit rows' key_hash), in hex.
	Permits     int    `json:"permits,omitempty"`
	PermitsHeld int    `json:"permits_held,omitempty"`
	KeyHash     string `json:"key_hash,omitempty"`
	// UnnamedShared: MariaDB shows the key held shared by transactions
	// that have written nothing, which its lock views give the id 0 that
	// all of them share: they are not named (one of the candidates);
	// UnnamedWaiting: requests of such transactions wait for the key.
	UnnamedShared  bool `json:"unnamed_shared_holders,omitempty"`
	UnnamedWaiting bool `json:"unnamed_waiters,omitempty"`
	// Source says how the holding was seen: "lock_waits" (MariaDB, someone
	// waits), "probe" (MariaDB, SKIP LOCKED probe: holder unknown),
	// "identify" (MariaDB, --identify), "data_locks" (MySQL).
	Source  string `json:"source"`
	Waiters []Conn `json:"waiters"`
}

// A Snapshot is what locks prints.
type Snapshot struct {
	Table  string    `json:"table"`
	Server string    `json:"server"`
	Flavor string    `json:"flavor"`
	Where  string    `json:"where"`
	At     time.Time `json:"at"`
	Keys   []HeldKey `json:"keys"`
	// Candidates are open transactions with row locks that are neither a
	// shown holder nor a waiter: one of them may hold a key shown with an
	// unknown holder (MariaDB).
	Candidates []Conn   `json:"candidates,omitempty"`
	Notes      []string `json:"notes"`
	// ProbeSeconds is how long the SKIP LOCKED probe took (MariaDB).
	ProbeSeconds *float64 `json:"probe_seconds,omitempty"`
}

func writeJSON(out io.Writer, v any, indent bool) error {
	enc := json.NewEncoder(out)
	if indent {
		enc.SetIndent("", "  ")
	}
	return enc.Encode(v)
}

// writeLocksTable prints a snapshot for people.
func writeLocksTable(out io.Writer, s *Snapshot) error {
	fmt.Fprintf(out, "%s on %s (%s), %s UTC\n", s.Table, s.Where, s.Server, s.At.Format("2006-01-02 15:04:05.000"))
	if len(s.Keys) == 0 {
		fmt.Fprintln(out, "no held key")
	} else {
		w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "KEY\tROW\tROLE\tMODE\tCONN\tLABEL\tUSER\tHOST\tTRX OPEN\tIDLE\tWAITED")
		for _, k := range s.Keys {
			// The key and its row on its first line only.
			first, row := k.KeyStr, strconv.FormatInt(k.RowID, 10)
			line := func(format string, args ...any) {
				fmt.Fprintf(w, "%s\t%s\t"+format+"\n", append([]any{first, row}, args...)...)
				first, row = "", ""
			}
			holderMode := func(h Conn) string { return dash(h.Mode) }
			unknown := 0
			if k.Mode == semMode {
				// Every holder line says how many permits are held of how many.
				holderMode = func(Conn) string { return fmt.Sprintf("%s %d/%d", semMode, k.PermitsHeld, k.Permits) }
				unknown = k.PermitsHeld - len(k.Holders)
			}
			for _, h := range k.Holders {
				line("holder\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t-", holderMode(h), h.ID, dash(h.Label), dash(h.User), dash(h.Host), secs(h.TrxAge), fsecs(h.Idle))
			}
			for range unknown {
				line("holder\t%s\t?\t-\t-\t-\t-\t-\t-", holderMode(Conn{}))
			}
			if k.Mode != semMode && (len(k.Holders) == 0 || k.UnnamedShared) {
				mode := k.Mode
				if k.UnnamedShared {
					mode = "S"
				}
				line("holder\t%s\t?\t-\t-\t-\t-\t-\t-", dash(mode))
			}
			for _, c := range k.Waiters {
				line("waiter\t%s\t%d\t%s\t%s\t%s\t%s\t-\t%s", dash(c.Mode), c.ID, dash(c.Label), dash(c.User), dash(c.Host), secs(c.TrxAge), fsecs(c.Waited))
			}
			if k.UnnamedWaiting {
				line("waiter\tS\t?\t-\t-\t-\t-\t-\t-")
			}
		}
		if err := w.Flush(); err != nil {
			return err
		}
	}
	if len(s.Candidates) > 0 {
		fmt.Fprintln(out, "\nopen transactions holding row locks, not shown above (one of them may be a \"?\" holder):")
		w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "CONN\tLABEL\tUSER\tHOST\tDB\tTRX OPEN\tIDLE\tROWS LOCKED")
		for _, c := range s.Candidates {
			fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\n", c.ID, dash(c.Label), dash(c.User), dash(c.Host), dash(c.DB), secs(c.TrxAge), fsecs(c.Idle), c.Rows)
		}
		if err := w.Flush(); err != nil {
			return err
		}
	}
	for _, n := range s.Notes {
		fmt.Fprintln(out, "note:", n)
	}
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func secs(v *int64) string {
	if v == nil {
		return "-"
	}
	return (time.Duration(*v) * time.Second).String()
}

func fsecs(v *float64) string {
	if v == nil {
		return "-"
	}
	return time.Duration(*v * float64(time.Second)).Round(time.Millisecond).String()
}
