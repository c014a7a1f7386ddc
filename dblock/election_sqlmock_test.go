package dblock_test

// SQL shape of elections on both dialects. MySQL has no FOR SHARE ...
// SKIP LOCKED in the old LOCK IN SHARE MODE syntax, and MariaDB 10.11 no
// FOR SHARE: these statements are checked here only, on MySQL (no MySQL
// server is tested against).

import (
	"context"
	"errors"
	"testing"

	"github.com/DATA-DOG/go-sqlmock"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/lockkey"
)

func TestSQLElectionStatements(t *testing.T) {
	for _, c := range []struct {
		srv         mockServer
		probe, wait string
	}{
		{mockMariaDB,
			"SELECT token FROM `tb_lock_leader` WHERE key_hash = ? LOCK IN SHARE MODE SKIP LOCKED",
			`^SET STATEMENT innodb_lock_wait_timeout=2 FOR SELECT ` + reTag + "token FROM `tb_lock_leader` WHERE key_hash = \\? FOR UPDATE$"},
		{mockMySQL,
			"SELECT token FROM `tb_lock_leader` WHERE key_hash = ? FOR SHARE SKIP LOCKED",
			`^SELECT /\*\+ SET_VAR\(innodb_lock_wait_timeout=2\) \*/ ` + reTag + "token FROM `tb_lock_leader` WHERE key_hash = \\? FOR UPDATE$"},
	} {
		t.Run(c.srv.comment, func(t *testing.T) {
			m := newMocked(t)
			l := m.locker(t, c.srv.version, c.srv.comment, c.srv.snapshotVar)
			defer l.Close()
			key := dblock.Resource("election:shape")
			h := lockkey.Fields(key).Hash()
			el := l.Election(key)
			const read = "SELECT value, token FROM `tb_lock_leader` WHERE key_hash = ?"
			leaderRows := func() *sqlmock.Rows { return sqlmock.NewRows([]string{"value", "token"}).AddRow("v", 5) }
			noRows := func() *sqlmock.Rows { return sqlmock.NewRows([]string{"token"}) }

			// Leader: read uncommitted on the side pool, then the probe
			// that tells a live leader's row (held: skipped) from a
			// committed one.
			m.side.mock.ExpectBegin()
			m.side.mock.ExpectQuery(read).WithArgs(h[:]).WillReturnRows(leaderRows())
			m.side.mock.ExpectQuery(c.probe).WithArgs(h[:]).WillReturnRows(noRows())
			m.side.mock.ExpectRollback()
			if got, err := el.Leader(context.Background()); err != nil || got != "v" {
				t.Fatalf("Leader = %q, %v; want v", got, err)
			}
			// A row the probe can take was committed: not a leader.
			m.side.mock.ExpectBegin()
			m.side.mock.ExpectQuery(read).WithArgs(h[:]).WillReturnRows(leaderRows())
			m.side.mock.ExpectQuery(c.probe).WithArgs(h[:]).WillReturnRows(sqlmock.NewRows([]string{"token"}).AddRow(5))
			m.side.mock.ExpectRollback()
			if _, err := el.Leader(context.Background()); !errors.Is(err, dblock.ErrNoLeader) {
				t.Fatalf("Leader of a committed row: %v, want ErrNoLeader", err)
			}

			// Observe: deliver the leader, then wait on its row on the
			// Locker's pool, bounded by the server's lock wait.
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			m.mock.ExpectBegin()
			m.mock.ExpectQuery(read).WithArgs(h[:]).WillReturnRows(leaderRows())
			m.mock.ExpectQuery(c.probe).WithArgs(h[:]).WillReturnRows(noRows())
			m.mock.ExpectRollback()
			m.mock.ExpectBegin()
			m.mock.ExpectQuery(read).WithArgs(h[:]).WillReturnRows(leaderRows())
			m.mock.ExpectQuery(c.probe).WithArgs(h[:]).WillReturnRows(noRows())
			m.mock.ExpectQuery(regexPrefix + c.wait).WithArgs(h[:]).WillReturnRows(noRows())
			m.mock.ExpectRollback()
			m.mock.ExpectBegin().WillReturnError(errors.New("end of the script"))
			ch := el.Observe(ctx)
			if v := <-ch; v != "v" {
				t.Fatalf("observed %q, want v", v)
			}
			waitFor(t, "the observer's statements", func() bool { return m.mock.ExpectationsWereMet() == nil })
			cancel()
			for range ch {
			}
			m.done(t)
		})
	}
}
