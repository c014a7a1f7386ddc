package dblock_test

// SQL shape of elections on both dialects (MySQL is checked here only:
// no MySQL server is tested against), and the refusal on Galera.

import (
	"context"
	"errors"
	"regexp"
	"testing"

	"github.com/DATA-DOG/go-sqlmock"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/internal/lockkey"
)

func TestSQLElectionStatements(t *testing.T) {
	const (
		reName = `txlock:[0-9a-f]{57}`
		// a row of a past server run does not count
		qRead = regexPrefix + "^SELECT value, token FROM `tb_lock_leader` WHERE key_hash = \\? AND conn_id = IS_USED_LOCK\\(\\?\\) AND since >= UTC_TIMESTAMP\\(6\\) - INTERVAL \\(SELECT VARIABLE_VALUE FROM (?:information_schema\\.GLOBAL_STATUS|performance_schema\\.global_status) WHERE VARIABLE_NAME = 'Uptime'\\) SECOND$"
		// written only while the session holds the lock; replacing only a
		// row whose session does not (or the writer's own)
		dead   = `IF\(conn_id = VALUES\(conn_id\) OR NOT \(IS_USED_LOCK\('` + reName + `'\) <=> conn_id\), `
		qWrite = regexPrefix + "^INSERT INTO `tb_lock_leader` \\(key_hash, value, token, conn_id, since\\) SELECT \\?, \\?, \\?, \\?, UTC_TIMESTAMP\\(6\\) FROM DUAL WHERE IS_USED_LOCK\\('" + reName + "'\\) = \\?" +
			" ON DUPLICATE KEY UPDATE value = " + dead + `VALUES\(value\), value\), token = ` + dead + `VALUES\(token\), token\), since = ` + dead + `VALUES\(since\), since\), conn_id = ` + dead + `VALUES\(conn_id\), conn_id\)$`
		qMine    = "SELECT IS_USED_LOCK(?) = CONNECTION_ID()"
		qRelease = "DO RELEASE_LOCK(?)"
	)
	for _, srv := range []mockServer{mockMariaDB, mockMySQL} {
		t.Run(srv.comment, func(t *testing.T) {
			m := newMocked(t)
			l := m.locker(t, srv.version, srv.comment, srv.snapshotVar)
			defer l.Close()
			key := dblock.Resource("election:shape")
			h := lockkey.Fields(key).Hash()
			el := l.Election(key)
			ctx := context.Background()

			// Campaign: the lease on the pinned session, the wait for the
			// named lock (tagged, the name literal), a ping, the token and
			// the row from the side pool, the check that the lock is still
			// the session's.
			m.mock.ExpectExec("SET SESSION wait_timeout = 60").WillReturnResult(sqlmock.NewResult(0, 0))
			// A leader row of a past server run with this connection's id
			// is unnamed before the wait.
			m.mock.ExpectExec("UPDATE `tb_lock_leader` SET conn_id = 0 WHERE key_hash = ? AND conn_id = CONNECTION_ID()").WithArgs(h[:]).WillReturnResult(sqlmock.NewResult(0, 0))
			m.mock.ExpectQuery(regexPrefix + `^SELECT ` + reTag + `GET_LOCK\('` + reName + `', 2\), CONNECTION_ID\(\)$`).
				WillReturnRows(sqlmock.NewRows([]string{"g", "id"}).AddRow(0, 42))
			m.mock.ExpectQuery(regexPrefix + `^SELECT ` + reTag + `GET_LOCK\('` + reName + `', 2\), CONNECTION_ID\(\)$`).
				WillReturnRows(sqlmock.NewRows([]string{"g", "id"}).AddRow(1, 42))
			m.mock.ExpectExec("DO 1").WillReturnResult(sqlmock.NewResult(0, 0))
			m.side.mock.ExpectExec(regexPrefix + "INSERT .*INTO `tb_lock_fence` \\(key_hash, token\\) VALUES").WithArgs(h[:]).WillReturnResult(sqlmock.NewResult(7, 1))
			m.side.mock.ExpectExec(qWrite).WithArgs(h[:], "v", int64(7), int64(42), int64(42)).WillReturnResult(sqlmock.NewResult(0, 1))
			m.mock.ExpectQuery(qMine).WithArgs(sqlmock.AnyArg()).WillReturnRows(sqlmock.NewRows([]string{"mine"}).AddRow(1))
			ld, err := el.Campaign(ctx, "v")
			if err != nil {
				t.Fatalf("Campaign: %v", err)
			}
			if ld.Token() != 7 {
				t.Fatalf("token %d, want 7", ld.Token())
			}

			// Leader: one statement on the side pool.
			m.side.mock.ExpectQuery(qRead).WithArgs(h[:], sqlmock.AnyArg()).WillReturnRows(sqlmock.NewRows([]string{"value", "token"}).AddRow("v", 7))
			if got, err := el.Leader(ctx); err != nil || got != "v" {
				t.Fatalf("Leader = %q, %v; want v", got, err)
			}
			m.side.mock.ExpectQuery(qRead).WithArgs(h[:], sqlmock.AnyArg()).WillReturnRows(sqlmock.NewRows([]string{"value", "token"}))
			if _, err := el.Leader(ctx); !errors.Is(err, dblock.ErrNoLeader) {
				t.Fatalf("Leader without a live row: %v, want ErrNoLeader", err)
			}

			// Resign: the named lock is released, the connection closed.
			m.mock.ExpectExec(qRelease).WithArgs(sqlmock.AnyArg()).WillReturnResult(sqlmock.NewResult(0, 0))
			m.mock.ExpectClose()
			if err := ld.Resign(ctx); err != nil {
				t.Fatalf("Resign: %v", err)
			}
			m.done(t)
		})
	}
}

// TestSQLElectionLateWrite: a campaign whose leader row is not written
// (the session no longer held the named lock when the write ran: it was
// paused past its lease) fails with ErrLockLost and hands out no token.
func TestSQLElectionLateWrite(t *testing.T) {
	m := newMocked(t)
	l := m.locker(t, mockMariaDB.version, mockMariaDB.comment, mockMariaDB.snapshotVar)
	defer l.Close()
	m.mock.ExpectExec("SET SESSION wait_timeout = 60").WillReturnResult(sqlmock.NewResult(0, 0))
	m.mock.ExpectExec(regexPrefix + "^UPDATE `tb_lock_leader` SET conn_id = 0").WillReturnResult(sqlmock.NewResult(0, 0))
	m.mock.ExpectQuery(regexPrefix + `GET_LOCK`).WillReturnRows(sqlmock.NewRows([]string{"g", "id"}).AddRow(1, 42))
	m.mock.ExpectExec("DO 1").WillReturnResult(sqlmock.NewResult(0, 0))
	m.side.mock.ExpectExec(regexPrefix + "INTO `tb_lock_fence`").WillReturnResult(sqlmock.NewResult(7, 1))
	m.side.mock.ExpectExec(regexPrefix + "^INSERT INTO `tb_lock_leader`").WillReturnResult(sqlmock.NewResult(0, 0))
	m.mock.ExpectClose()
	ld, err := l.Election(dblock.Resource("election:late")).Campaign(context.Background(), "v")
	if !errors.Is(err, dblock.ErrLockLost) || ld != nil {
		t.Fatalf("Campaign = %v, %v; want ErrLockLost and no leadership", ld, err)
	}
	mustContain(t, err, "lost the named lock")
	m.done(t)
}

// TestSQLElectionGalera: a Galera node's named locks are its own, so an
// election there is refused, naming the limitation, before any statement.
func TestSQLElectionGalera(t *testing.T) {
	m := newMocked(t)
	m.expectDetectWith(mariaVersion, mariaComment, true, galeraVars)
	m.expectSideCheck()
	l, err := m.newLocker(dblock.GaleraSingleWriter())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	el := l.Election(dblock.Resource("election:galera"))
	_, err = el.Campaign(context.Background(), "v")
	if err == nil || !regexp.MustCompile(`Galera.*GET_LOCK`).MatchString(err.Error()) {
		t.Fatalf("Campaign on Galera: %v, want the Galera limitation", err)
	}
	if _, err := el.Leader(context.Background()); err == nil {
		t.Fatal("Leader on Galera succeeded")
	}
	m.done(t)
}
