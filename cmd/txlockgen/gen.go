package main

import (
	"errors"
	"fmt"
	"go/token"
	"go/types"
	"path/filepath"
	"strings"

	"golang.org/x/tools/go/packages"
)

// config is what the flags say.
type config struct {
	dir       string // package directory
	typeName  string // the interface
	output    string // output file; relative paths are in dir
	proxyName string // the proxy type; default Locked<typeName>
}

// posError is an error about the source, printed as file:line:col: msg.
type posError struct {
	pos token.Position
	msg string
}

// Error renders the error as file:line:col: msg, the file relative to the
// working directory when it is below it.
func (e *posError) Error() string {
	return fmt.Sprintf("%s:%d:%d: %s", relPath(e.pos.Filename), e.pos.Line, e.pos.Column, e.msg)
}

// The packages generated code refers to.
const (
	dblockPath    = "github.com/txlock/txlock/dblock"
	decoratorPath = "github.com/txlock/txlock/decorator"
)

// generate loads the package in cfg.dir and returns the output path and
// the generated source.
func generate(cfg config) (string, []byte, error) {
	if !token.IsIdentifier(cfg.typeName) {
		return "", nil, fmt.Errorf("-type %q is not a Go identifier", cfg.typeName)
	}
	dir, err := filepath.Abs(cfg.dir)
	if err != nil {
		return "", nil, err
	}
	proxy := cfg.proxyName
	if proxy == "" {
		proxy = "Locked" + cfg.typeName
	}
	if !token.IsIdentifier(proxy) || !token.IsExported(proxy) {
		return "", nil, fmt.Errorf("-name %q is not an exported Go identifier", proxy)
	}
	output := cfg.output
	if output == "" {
		output = strings.ToLower(cfg.typeName) + "_txlock.go"
	}
	if !filepath.IsAbs(output) {
		output = filepath.Join(dir, output)
	}
	pkg, err := load(dir, output)
	if err != nil {
		return "", nil, err
	}
	src, err := generateFor(pkg, cfg.typeName, proxy)
	if err != nil {
		return "", nil, err
	}
	return output, src, nil
}

// generateFor generates the proxy proxy of the interface iface of the
// loaded package pkg.
func generateFor(pkg *packages.Package, iface, proxy string) ([]byte, error) {
	g := &generator{pkg: pkg, iface: iface, proxy: proxy}
	return g.generate()
}

// loadMode is what the generator needs of a package: its syntax, with
// comments, and its types.
const loadMode = packages.NeedName | packages.NeedFiles | packages.NeedSyntax |
	packages.NeedTypes | packages.NeedTypesInfo | packages.NeedImports

// load loads and type-checks the package in dir. The output file, if it
// exists, is replaced by an ignored file: a stale proxy must not keep the
// package from loading, nor declare the names it is about to declare.
func load(dir, output string) (*packages.Package, error) {
	cfg := &packages.Config{
		Mode:    loadMode,
		Dir:     dir,
		Overlay: map[string][]byte{output: []byte("//go:build ignore\n\npackage ignore\n")},
	}
	pkgs, err := packages.Load(cfg, ".")
	if err != nil {
		return nil, fmt.Errorf("loading the package in %s: %w", relPath(dir), err)
	}
	if len(pkgs) != 1 {
		return nil, fmt.Errorf("loading the package in %s: found %d packages, want 1", relPath(dir), len(pkgs))
	}
	pkg := pkgs[0]
	// Type errors are tolerated (go list reports those of its own compile
	// of the package too): other files of the package may refer to the
	// proxy that is about to be generated. The generator checks that what
	// it uses is well typed. Syntax errors are not tolerated.
	var hard []packages.Error
	for _, e := range pkg.Errors {
		if e.Kind == packages.ParseError || pkg.Types == nil || len(pkg.Syntax) == 0 {
			hard = append(hard, e)
		}
	}
	if len(hard) > 0 {
		var errs []error
		for i, e := range hard {
			if i == 10 {
				errs = append(errs, fmt.Errorf("... and %d more errors", len(hard)-i))
				break
			}
			errs = append(errs, errors.New(e.Error()))
		}
		return nil, fmt.Errorf("the package in %s does not compile: %w", relPath(dir), errors.Join(errs...))
	}
	return pkg, nil
}

// generator holds the state of one generation.
type generator struct {
	pkg   *packages.Package
	iface string // the interface
	proxy string // the proxy type

	imports  *importSet
	declared map[string]bool // package-level names of the generated file
	locals   locals
	methods  []*method
	errs     []error
}

// A method of the interface, with its lock if it is locked.
type method struct {
	name    string
	fn      *types.Func
	sig     *types.Signature
	params  []param
	results []string // type expressions, the error last when locked
	lock    *lockSpec
	sigOK   bool // a locked method's signature has ctx first and error last
	key     *keyPlan
}

type param struct {
	source string // the name in the interface, "" or "_" when unnamed
	name   string // the name in generated code
	typ    string // type expression; ...T for a variadic last parameter
	t      types.Type
}

func (g *generator) errorf(pos token.Pos, format string, args ...any) {
	g.errs = append(g.errs, &posError{pos: g.pkg.Fset.Position(pos), msg: fmt.Sprintf(format, args...)})
}

func (g *generator) errAt(pos token.Position, format string, args ...any) {
	g.errs = append(g.errs, &posError{pos: pos, msg: fmt.Sprintf(format, args...)})
}

// generate checks the interface and its directives and renders the proxy.
func (g *generator) generate() ([]byte, error) {
	obj := g.pkg.Types.Scope().Lookup(g.iface)
	if obj == nil {
		return nil, fmt.Errorf("type %s not found in package %s (%s)", g.iface, g.pkg.Name, g.pkg.PkgPath)
	}
	tn, ok := obj.(*types.TypeName)
	if !ok {
		return nil, &posError{pos: g.pkg.Fset.Position(obj.Pos()), msg: fmt.Sprintf("%s is not a type", g.iface)}
	}
	named, _ := tn.Type().(*types.Named)
	it, isIface := tn.Type().Underlying().(*types.Interface)
	if named == nil || !isIface || tn.IsAlias() {
		return nil, &posError{pos: g.pkg.Fset.Position(obj.Pos()), msg: fmt.Sprintf("%s is not an interface type declaration", g.iface)}
	}
	if named.TypeParams().Len() > 0 {
		return nil, &posError{pos: g.pkg.Fset.Position(obj.Pos()), msg: fmt.Sprintf("%s is generic: txlockgen does not support generic interfaces", g.iface)}
	}
	if !it.IsMethodSet() {
		return nil, &posError{pos: g.pkg.Fset.Position(obj.Pos()), msg: fmt.Sprintf("%s is a constraint interface, not a method set", g.iface)}
	}
	decls := g.methodDecls(tn)

	g.imports = newImportSet(g.pkg.Types)
	g.imports.use(dblockPath, "dblock")
	for fn := range it.Methods() { // sorted by name: deterministic output
		if !fn.Exported() && fn.Pkg() != g.pkg.Types {
			g.errorf(fn.Pos(), "%s has the unexported method %s of package %s: a proxy outside that package cannot implement it", g.iface, fn.Name(), fn.Pkg().Path())
			continue
		}
		if hasInvalid(fn.Type()) {
			g.errorf(fn.Pos(), "the signature of %s.%s does not type-check: %s", g.iface, fn.Name(), g.typeErrors())
			continue
		}
		m := &method{name: fn.Name(), fn: fn, sig: fn.Type().(*types.Signature), lock: g.lockOf(fn.Name(), decls[fn.Name()])}
		g.methods = append(g.methods, m)
	}
	g.checkNames()
	g.checkPermits()
	g.chooseLocals()
	for _, m := range g.methods {
		g.prepare(m)
	}
	for _, m := range g.methods {
		g.nameParams(m)
		if m.lock != nil && m.sigOK {
			m.key = g.planKey(m)
		}
	}
	if len(g.errs) > 0 {
		return nil, errors.Join(g.errs...)
	}
	return g.render()
}

func firstWord(s string) string {
	if f := strings.Fields(s); len(f) > 0 {
		return f[0]
	}
	return s
}

// prepare computes the parameter names and types of m and, for a locked
// method, checks its signature and plans its key.
func (g *generator) prepare(m *method) {
	sig := m.sig
	for i := range sig.Results().Len() {
		m.results = append(m.results, g.typeString(sig.Results().At(i).Type()))
	}
	for i := range sig.Params().Len() {
		v := sig.Params().At(i)
		p := param{source: v.Name(), t: v.Type(), typ: g.typeString(v.Type())}
		if sig.Variadic() && i == sig.Params().Len()-1 {
			p.typ = "..." + g.typeString(v.Type().(*types.Slice).Elem())
		}
		m.params = append(m.params, p)
	}
	if m.lock == nil {
		return
	}
	pos := m.lock.pos
	if sig.Params().Len() == 0 || !isContext(sig.Params().At(0).Type()) {
		g.errAt(pos, "%s is locked but does not take a context.Context first: the lock's transaction travels in ctx", m.name)
		return
	}
	if !returnsError(sig) {
		g.errAt(pos, "%s is locked but does not return an error last: a lock that is not acquired has to be reported", m.name)
		return
	}
	m.sigOK = true
}

func isContext(t types.Type) bool {
	n, ok := t.(*types.Named)
	if a, isAlias := t.(*types.Alias); isAlias {
		n, ok = types.Unalias(a).(*types.Named)
	}
	return ok && n.Obj().Pkg() != nil && n.Obj().Pkg().Path() == "context" && n.Obj().Name() == "Context"
}

// ref returns the name of the package path in the generated file, and
// marks it imported.
func (g *generator) ref(path string) string {
	return g.imports.use(path, path[strings.LastIndex(path, "/")+1:])
}

// typeString renders t as seen from the generated file, importing the
// packages it names.
func (g *generator) typeString(t types.Type) string {
	return types.TypeString(t, g.imports.qualifier)
}

// hasInvalid reports whether t mentions a type that did not type-check.
func hasInvalid(t types.Type) bool {
	return strings.Contains(types.TypeString(t, nil), "invalid type")
}

// typeErrors summarises the package's type errors for a message.
func (g *generator) typeErrors() string {
	var msgs []string
	for i, e := range g.pkg.Errors {
		if i == 3 {
			msgs = append(msgs, "...")
			break
		}
		msgs = append(msgs, e.Error())
	}
	if len(msgs) == 0 {
		return "unknown error"
	}
	return strings.Join(msgs, "; ")
}
