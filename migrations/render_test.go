package migrations

import (
	"io/fs"
	"strings"
	"testing"

	"github.com/txlock/txlock/schema"
)

func TestRenderRenamesEveryIdentifier(t *testing.T) {
	fsys, err := render("acme_locks")
	if err != nil {
		t.Fatal(err)
	}
	b, err := fs.ReadFile(fsys, "00001_create_tb_lock.sql")
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	for _, want := range []string{
		"CREATE TABLE IF NOT EXISTS `acme_locks` (",
		"CREATE TABLE IF NOT EXISTS `acme_locks_fence` (",
		"UNIQUE KEY `uk_acme_locks_key_hash` (key_hash)",
		"DROP TABLE IF EXISTS `acme_locks_fence`, `acme_locks`;",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("rendered SQL lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, schema.DefaultTable) {
		t.Errorf("rendered SQL still mentions %q:\n%s", schema.DefaultTable, text)
	}
}

func TestRenderDefaultIsEmbeddedSQL(t *testing.T) {
	fsys, err := render(schema.DefaultTable)
	if err != nil {
		t.Fatal(err)
	}
	got, err := fs.ReadFile(fsys, "00001_create_tb_lock.sql")
	if err != nil {
		t.Fatal(err)
	}
	want, err := fs.ReadFile(FS(), "00001_create_tb_lock.sql")
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Error("rendering for the default table changed the SQL")
	}
}

func TestEmbeddedSources(t *testing.T) {
	sources, err := embeddedSources()
	if err != nil {
		t.Fatal(err)
	}
	if len(sources) == 0 {
		t.Fatal("no embedded migrations")
	}
	for i, s := range sources {
		if s.version != int64(i+1) {
			t.Errorf("migration %d is %s (version %d): versions must be 1, 2, 3, ... without gaps", i, s.name, s.version)
		}
		b, err := fs.ReadFile(FS(), s.name)
		if err != nil {
			t.Fatal(err)
		}
		for _, ann := range []string{"-- +goose Up\n", "-- +goose Down\n"} {
			if !strings.Contains(string(b), ann) {
				t.Errorf("%s lacks the annotation %q", s.name, strings.TrimSpace(ann))
			}
		}
	}
	if got, want := Latest(), sources[len(sources)-1].version; got != want {
		t.Errorf("Latest() = %d, want %d", got, want)
	}
}

func TestOptionsRejectBadValues(t *testing.T) {
	for name, opt := range map[string]Option{
		"empty table":      Table(""),
		"nil logger":       Logger(nil),
		"zero timeout":     LockTimeout(0),
		"negative timeout": LockTimeout(-1),
	} {
		if err := opt(&config{}); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
