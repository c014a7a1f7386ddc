package schema_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"

	gormschema "gorm.io/gorm/schema"

	"github.com/txlock/txlock/internal/testdb"
	"github.com/txlock/txlock/schema"
)

func TestMain(m *testing.M) { testdb.Main(m) }

func TestValidTableName(t *testing.T) {
	t.Parallel()
	valid := []string{
		"tb_lock", "_", "a", "A9", "_tb_lock_2", "Locks",
		strings.Repeat("a", schema.MaxTableNameLen),
	}
	invalid := []string{
		"", "9tb", "tb-lock", "tb lock", "tb.lock", "tb`lock", "tb_lock;", "tëb",
		strings.Repeat("a", schema.MaxTableNameLen+1),
	}
	for _, n := range valid {
		if err := schema.ValidTableName(n); err != nil {
			t.Errorf("ValidTableName(%q) = %v, want nil", n, err)
		}
	}
	for _, n := range invalid {
		if err := schema.ValidTableName(n); err == nil {
			t.Errorf("ValidTableName(%q) = nil, want an error", n)
		}
	}
	// Every identifier derived from the longest name fits MySQL's 64.
	longest := strings.Repeat("a", schema.MaxTableNameLen)
	for _, derived := range []string{
		longest,
		schema.FenceTable(longest),
		schema.RunTable(longest),
		schema.LeaderTable(longest),
		schema.SessionTable(longest),
		"uk_" + longest + "_key_hash",
		longest + schema.VersionTableSuffix,
	} {
		if len(derived) > 64 {
			t.Errorf("derived identifier %q has %d characters, more than 64", derived, len(derived))
		}
	}
}

func TestTableNames(t *testing.T) {
	t.Parallel()
	if got := (schema.Lock{}).TableName(); got != schema.DefaultTable {
		t.Errorf("Lock.TableName() = %q", got)
	}
	if got := (schema.Fence{}).TableName(); got != schema.FenceTable(schema.DefaultTable) {
		t.Errorf("Fence.TableName() = %q", got)
	}
	if got := schema.FenceTable("x"); got != "x_fence" {
		t.Errorf("FenceTable(x) = %q", got)
	}
}

// column is one row of SHOW COLUMNS.
type column struct {
	Type    string
	Null    string
	Key     string
	Default *string
	Extra   string
}

func showColumns(t *testing.T, table string) map[string]column {
	t.Helper()
	db, err := testdb.Open(t).DB()
	if err != nil {
		t.Fatal(err)
	}
	rows, err := db.QueryContext(context.Background(), "SHOW COLUMNS FROM `"+table+"`")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	cols := make(map[string]column)
	for rows.Next() {
		var name string
		var c column
		if err := rows.Scan(&name, &c.Type, &c.Null, &c.Key, &c.Default, &c.Extra); err != nil {
			t.Fatal(err)
		}
		cols[name] = c
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return cols
}

// TestModelsMatchMigrations compares the gorm models with the tables that
// the migrations create on the real server.
func TestModelsMatchMigrations(t *testing.T) {
	t.Parallel()
	table := testdb.Table(t, testdb.Open(t))
	cache := &sync.Map{}
	for _, tc := range []struct {
		model any
		table string
	}{
		{&schema.Lock{}, table},
		{&schema.Fence{}, schema.FenceTable(table)},
	} {
		s, err := gormschema.Parse(tc.model, cache, gormschema.NamingStrategy{})
		if err != nil {
			t.Fatalf("parsing %T: %v", tc.model, err)
		}
		cols := showColumns(t, tc.table)
		fields := make(map[string]*gormschema.Field)
		for _, f := range s.Fields {
			if f.DBName != "" {
				fields[f.DBName] = f
			}
		}
		for name := range cols {
			if fields[name] == nil {
				t.Errorf("%T has no field for column %s.%s", tc.model, tc.table, name)
			}
		}
		for name, f := range fields {
			c, ok := cols[name]
			if !ok {
				t.Errorf("%T.%s: column %s.%s does not exist", tc.model, f.Name, tc.table, name)
				continue
			}
			if c.Null != "NO" || !f.NotNull && !f.PrimaryKey {
				t.Errorf("%T.%s: column NULL=%s, model not null=%v: both must be NOT NULL", tc.model, f.Name, c.Null, f.NotNull)
			}
			if f.PrimaryKey != (c.Key == "PRI") {
				t.Errorf("%T.%s: model primary key=%v, column key %q", tc.model, f.Name, f.PrimaryKey, c.Key)
			}
			if f.AutoIncrement != strings.Contains(c.Extra, "auto_increment") {
				t.Errorf("%T.%s: model autoIncrement=%v, column extra %q", tc.model, f.Name, f.AutoIncrement, c.Extra)
			}
			if f.Unique || f.UniqueIndex != "" {
				t.Errorf("%T.%s: unique is declared through the index tag, not the field", tc.model, f.Name)
			}
			switch f.DataType {
			case gormschema.String:
				if want := fmt.Sprintf("varchar(%d)", f.Size); c.Type != want {
					t.Errorf("%T.%s: column type %s, model %s", tc.model, f.Name, c.Type, want)
				}
			case gormschema.Time:
				if c.Type != fmt.Sprintf("datetime(%d)", f.Precision) {
					t.Errorf("%T.%s: column type %s, model precision %d", tc.model, f.Name, c.Type, f.Precision)
				}
			case gormschema.Uint:
				if !strings.HasPrefix(c.Type, "bigint") || !strings.Contains(c.Type, "unsigned") || f.Size != 64 {
					t.Errorf("%T.%s: column type %s, model uint%d", tc.model, f.Name, c.Type, f.Size)
				}
			case gormschema.Bool:
				if c.Type != "tinyint(1)" {
					t.Errorf("%T.%s: column type %s, model bool", tc.model, f.Name, c.Type)
				}
			default:
				if c.Type != strings.ToLower(string(f.DataType)) {
					t.Errorf("%T.%s: column type %s, model %s", tc.model, f.Name, c.Type, f.DataType)
				}
			}
		}
		// The unique key over key_hash.
		if tc.table == table {
			if got := cols["key_hash"].Key; got != "UNI" {
				t.Errorf("%s.key_hash key = %q, want UNI", table, got)
			}
			found := false
			for _, idx := range s.ParseIndexes() {
				if idx.Name == "uk_tb_lock_key_hash" && idx.Class == "UNIQUE" &&
					len(idx.Fields) == 1 && idx.Fields[0].DBName == "key_hash" {
					found = true
				}
			}
			if !found {
				t.Error("the model lacks the unique index uk_tb_lock_key_hash over key_hash")
			}
		}
	}
}

func TestColumnLimitsMatchModel(t *testing.T) {
	t.Parallel()
	s, err := gormschema.Parse(&schema.Lock{}, &sync.Map{}, gormschema.NamingStrategy{})
	if err != nil {
		t.Fatal(err)
	}
	for col, want := range map[string]int{
		"resource":  schema.MaxResourceLen,
		"operation": schema.MaxOperationLen,
		"method":    schema.MaxMethodLen,
		"user_id":   schema.MaxUserLen,
	} {
		f := s.LookUpField(col)
		if f == nil {
			t.Fatalf("no field for column %s", col)
		}
		if f.Size != want {
			t.Errorf("%s: model size %d, constant %d", col, f.Size, want)
		}
	}
}
