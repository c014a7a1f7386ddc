package main

import (
	"fmt"
	"go/types"
	"sort"
	"strings"
)

// importSet names the packages a generated file imports: each package's
// own name, or that name with a number when two packages share it or the
// name is declared in the generated file's package.
type importSet struct {
	self   *types.Package
	byPath map[string]string // path -> name in the file
	byName map[string]string // name -> path
	used   map[string]bool   // paths actually referred to
}

// fixedImports are the packages generated code may use, with their
// names unless the package declares those.
var fixedImports = [...][2]string{
	{"context", "context"},
	{dblockPath, "dblock"},
	{decoratorPath, "decorator"},
	{"errors", "errors"},
	{"fmt", "fmt"},
	{"strconv", "strconv"},
	{"time", "time"},
}

func newImportSet(self *types.Package) *importSet {
	s := &importSet{self: self, byPath: map[string]string{}, byName: map[string]string{}, used: map[string]bool{}}
	for _, f := range fixedImports {
		s.add(f[0], f[1])
	}
	return s
}

// add names the import of path: name, or name with a number when another
// import has the name or the package declares it (a package-level
// decorator or dblock would collide with the import).
func (s *importSet) add(path, name string) string {
	n := name
	for i := 2; s.byName[n] != "" || s.self.Scope().Lookup(n) != nil; i++ {
		n = fmt.Sprintf("%s%d", name, i)
	}
	s.byPath[path], s.byName[n] = n, path
	return n
}

// use marks path as imported and returns its name in the file.
func (s *importSet) use(path, name string) string {
	n, ok := s.byPath[path]
	if !ok {
		n = s.add(path, name)
	}
	s.used[path] = true
	return n
}

// qualifier is a types.Qualifier for the generated file.
func (s *importSet) qualifier(p *types.Package) string {
	if p == s.self {
		return ""
	}
	return s.use(p.Path(), p.Name())
}

// isName reports whether name is, or may become, the name of an import.
func (s *importSet) isName(name string) bool { return s.byName[name] != "" }

// decl renders the import declaration.
func (s *importSet) decl() string {
	var paths []string
	for p := range s.used {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	// The standard library first, then the others, as goimports does.
	sort.SliceStable(paths, func(i, j int) bool { return isStd(paths[i]) && !isStd(paths[j]) })
	var b strings.Builder
	b.WriteString("import (\n")
	for i, p := range paths {
		if i > 0 && isStd(paths[i-1]) && !isStd(p) {
			b.WriteString("\n")
		}
		name := s.byPath[p]
		if last := p[strings.LastIndex(p, "/")+1:]; last == name {
			fmt.Fprintf(&b, "\t%q\n", p)
		} else {
			fmt.Fprintf(&b, "\t%s %q\n", name, p)
		}
	}
	b.WriteString(")\n")
	return b.String()
}

// isStd reports whether path is a standard library package: its first
// element has no dot.
func isStd(path string) bool {
	first, _, _ := strings.Cut(path, "/")
	return !strings.Contains(first, ".")
}
