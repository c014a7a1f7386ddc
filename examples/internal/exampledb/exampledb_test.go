package exampledb

import "testing"

func TestDSN(t *testing.T) {
	t.Setenv(EnvDSN, "")
	if got := DSN(); got != DefaultDSN {
		t.Errorf("DSN() with $%s empty = %q, want %q", EnvDSN, got, DefaultDSN)
	}
	const dsn = "app:secret@tcp(db:3306)/orders"
	t.Setenv(EnvDSN, dsn)
	if got := DSN(); got != dsn {
		t.Errorf("DSN() = %q, want $%s %q", got, EnvDSN, dsn)
	}
}

func TestOpenBadDSN(t *testing.T) {
	if _, err := Open("not a dsn"); err == nil {
		t.Error("Open of a malformed DSN succeeded")
	}
}
