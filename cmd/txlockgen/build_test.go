package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"golang.org/x/tools/go/packages"
)

// lockedRE finds the locked methods of a generated proxy: the calls of
// decorator.Call and CallResult, whatever the names of the import and the
// receiver.
var lockedRE = regexp.MustCompile(`\.Call(?:Result)?\(\w+, \w+\.locker, "\w+\.(\w+)"`)

// TestGeneratedCodeBuilds generates proxies for interfaces that broke
// generated code or left methods unlocked before (parameters named like
// types, key functions or locals, package-level names of the imports,
// embedded, generic, foreign and defined interfaces, grouped
// declarations, the shapes of parameters and results), checks which
// methods each proxy locks, and builds and vets the packages with the
// generated files laid over them (go build -overlay: testdata is not
// written to).
func TestGeneratedCodeBuilds(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go build and go vet")
	}
	t.Parallel()
	cases := []struct {
		dir, typ string
		locked   []string
	}{
		{"follow", "Embeds", []string{"Job", "Own", "Run", "Save", "Sweep"}},
		{"follow", "Defined", []string{"Run"}},
		{"follow", "ViaDefined", []string{"Run"}},
		{"follow", "Redeclared", []string{"Run"}},
		{"follow", "GroupA", []string{"A"}},
		{"follow", "GroupB", []string{"B"}},
		{"names", "Service", []string{"Kinds", "Named", "Refund", "Report", "Results", "Three", "Unnamed", "Variadic", "Zero"}},
		{"imports", "Service", []string{"At", "Keyed", "Run"}},
	}
	tmp := t.TempDir()
	overlay := map[string]string{}
	var pkgs []string
	loaded := map[string]*packages.Package{} // one load per package
	for _, c := range cases {
		dir := filepath.Join("testdata", "build", c.dir)
		pkg := loaded[dir]
		if pkg == nil {
			pkg = mustLoad(t, dir)
			loaded[dir] = pkg
		}
		out := filepath.Join(pkg.Dir, strings.ToLower(c.typ)+"_txlock.go")
		src, err := generateFor(pkg, c.typ, "Locked"+c.typ)
		if err != nil {
			t.Errorf("generating %s.%s: %v", c.dir, c.typ, err)
			continue
		}
		var locked []string
		for _, m := range lockedRE.FindAllSubmatch(src, -1) {
			locked = append(locked, string(m[1]))
		}
		if !slices.Equal(locked, c.locked) {
			t.Errorf("%s.%s: the proxy locks %v, want %v", c.dir, c.typ, locked, c.locked)
		}
		file := filepath.Join(tmp, c.dir+"_"+filepath.Base(out))
		if err := os.WriteFile(file, src, 0o644); err != nil {
			t.Fatal(err)
		}
		overlay[out] = file
		if pkg := "./" + filepath.ToSlash(dir); !slices.Contains(pkgs, pkg) {
			pkgs = append(pkgs, pkg)
		}
	}
	if t.Failed() {
		return
	}
	b, err := json.Marshal(map[string]any{"Replace": overlay})
	if err != nil {
		t.Fatal(err)
	}
	ov := filepath.Join(tmp, "overlay.json")
	if err := os.WriteFile(ov, b, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tool := range []string{"build", "vet"} {
		cmd := exec.Command("go", append([]string{tool, "-overlay", ov}, pkgs...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("go %s of the generated proxies: %v\n%s", tool, err, out)
		}
	}
	if !t.Failed() {
		t.Logf("%d proxies in %s build and vet", len(overlay), strings.Join(pkgs, " "))
	}
}
