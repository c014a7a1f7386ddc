package main

import (
	"fmt"
	"go/ast"
	"go/token"
	"go/types"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/tools/go/packages"
)

// A methodDecl is one declaration of an interface method in source, with
// the directive of its doc comment, if any. A method reaches the chosen
// interface through embedded and defined interfaces, possibly through
// several of them: each declaration is one methodDecl.
type methodDecl struct {
	pos    token.Position // the method's name
	owner  string         // the declaring interface, for messages ("Repo", "io.Closer")
	lock   *lockSpec      // nil without a directive
	params []string       // the parameter names as declared
	pkg    string         // the path of the declaring package
}

// declWalker follows the declaration of the chosen interface, the
// interfaces it embeds and those it is defined from (type Service Base),
// in its package or another, collects the declarations of their methods
// and checks every comment in those declarations.
type declWalker struct {
	g       *generator
	byName  map[string][]methodDecl
	used    map[*ast.Comment]bool // directives read from a method's doc
	visited map[string]bool       // type declarations walked, by path.Name
	sources map[string]*packages.Package
}

// methodDecls walks the declaration of tn and returns the declarations of
// its methods by name. Errors go to g.errs.
func (g *generator) methodDecls(tn *types.TypeName) map[string][]methodDecl {
	w := &declWalker{g: g, byName: map[string][]methodDecl{}, used: map[*ast.Comment]bool{},
		visited: map[string]bool{}, sources: map[string]*packages.Package{}}
	w.walkObj(tn)
	return w.byName
}

// walkObj walks the declaration of the type named obj, or, for the
// standard library and predeclared types, which carry no directives,
// records the methods of its method set.
func (w *declWalker) walkObj(obj *types.TypeName) {
	key := obj.Name()
	if obj.Pkg() != nil {
		key = obj.Pkg().Path() + "." + key
	}
	if w.visited[key] {
		return
	}
	w.visited[key] = true
	if obj.Pkg() == nil || isStd(obj.Pkg().Path()) {
		w.typeOnly(obj)
		return
	}
	src, err := w.source(obj.Pkg().Path())
	if err != nil {
		w.g.errs = append(w.g.errs, fmt.Errorf("reading the declaration of %s, whose methods %s has, to look for directives: %w", key, w.g.iface, err))
		return
	}
	file, decl, spec := findTypeSpec(src, obj.Name())
	if spec == nil {
		w.g.errs = append(w.g.errs, fmt.Errorf("reading the declaration of %s, whose methods %s has, to look for directives: not found in the source of %s", key, w.g.iface, src.PkgPath))
		return
	}
	owner := obj.Name()
	if src != w.g.pkg {
		owner = src.Name + "." + owner
	}
	w.walkExpr(src, owner, spec.Type)
	w.checkComments(src, file, decl, spec)
}

// typeOnly records the methods of a type whose source is not read.
func (w *declWalker) typeOnly(obj *types.TypeName) {
	it, ok := obj.Type().Underlying().(*types.Interface)
	if !ok {
		return
	}
	owner := obj.Name()
	if obj.Pkg() != nil {
		owner = obj.Pkg().Name() + "." + owner
	}
	for fn := range it.Methods() {
		w.add(fn.Name(), methodDecl{owner: owner, params: paramNames(fn)}) // no source position: not read
	}
}

// walkExpr walks the type expression of a declaration: an interface's
// methods and embedded types, or the type it is defined from.
func (w *declWalker) walkExpr(src *packages.Package, owner string, expr ast.Expr) {
	it, ok := ast.Unparen(expr).(*ast.InterfaceType)
	if !ok {
		w.walkType(src.TypesInfo.TypeOf(expr))
		return
	}
	for _, f := range it.Methods.List {
		if len(f.Names) > 0 {
			w.method(src, owner, f)
			continue
		}
		for _, c := range directivesIn(f.Doc) {
			w.used[c] = true
			w.errAt(src, c.Pos(), "%s on an embedded interface: put directives on the methods of the interface that declares them", firstWord(c.Text))
		}
		w.walkExpr(src, owner, f.Type)
	}
}

// walkType walks the declaration of a type an interface embeds or is
// defined from.
func (w *declWalker) walkType(t types.Type) {
	switch t := t.(type) {
	case *types.Named:
		w.walkObj(t.Origin().Obj())
	case *types.Alias:
		w.walkObj(t.Origin().Obj())
	}
}

// method records the declaration f of a method, with its directive.
func (w *declWalker) method(src *packages.Package, owner string, f *ast.Field) {
	name := f.Names[0]
	d := methodDecl{pos: src.Fset.Position(name.Pos()), owner: owner, pkg: src.PkgPath}
	if fn, ok := src.TypesInfo.Defs[name].(*types.Func); ok {
		d.params = paramNames(fn)
	}
	for _, c := range directivesIn(f.Doc) {
		w.used[c] = true
		pos := src.Fset.Position(c.Pos())
		if d.lock != nil {
			w.g.errAt(pos, "second %s on %s (the first is on line %d): put all terms on one line", lockDirective, name.Name, d.lock.pos.Line)
			continue
		}
		s, err := parseLock(c.Text, pos)
		if err != nil {
			w.g.errs = append(w.g.errs, err)
			continue
		}
		d.lock = s
	}
	w.add(name.Name, d)
}

func (w *declWalker) add(name string, d methodDecl) { w.byName[name] = append(w.byName[name], d) }

// checkComments reports the directives of the declaration of spec that
// are not in a method's doc comment, and the comments that look like
// directives but are not. Only the declaration of spec is read: in a
// grouped declaration, type ( A ...; B ... ), the other specs are not
// this interface's.
func (w *declWalker) checkComments(src *packages.Package, file *ast.File, decl *ast.GenDecl, spec *ast.TypeSpec) {
	start := spec.Pos()
	if spec.Doc != nil {
		start = spec.Doc.Pos()
	}
	for _, cg := range file.Comments {
		in := cg == decl.Doc || cg == spec.Comment || (cg.Pos() >= start && cg.End() <= spec.End())
		if !in {
			continue
		}
		for _, c := range cg.List {
			switch {
			case w.used[c]:
			case strings.HasPrefix(c.Text, directivePrefix):
				w.errAt(src, c.Pos(), "misplaced %s: a directive goes in the doc comment of an interface method, on its own line directly above the method", firstWord(c.Text))
			default:
				if fix, why, ok := lookAlike(c.Text); ok {
					w.errAt(src, c.Pos(), "%s looks like a txlockgen directive but is not one, so txlockgen would not lock the method: write %s instead (%s), on its own line directly above the method",
						shorten(c.Text), fix, why)
				}
			}
		}
	}
}

func (w *declWalker) errAt(src *packages.Package, pos token.Pos, format string, args ...any) {
	w.g.errAt(src.Fset.Position(pos), format, args...)
}

// source returns the package at path with its syntax and types: the
// package of -dir, or another one, loaded once.
func (w *declWalker) source(path string) (*packages.Package, error) {
	if path == w.g.pkg.PkgPath {
		return w.g.pkg, nil
	}
	if p, ok := w.sources[path]; ok {
		return p, nil
	}
	dir := w.g.pkg.Dir
	if dir == "" && len(w.g.pkg.GoFiles) > 0 {
		dir = filepath.Dir(w.g.pkg.GoFiles[0])
	}
	cfg := &packages.Config{Mode: loadMode, Dir: dir}
	pkgs, err := packages.Load(cfg, path)
	if err != nil {
		return nil, err
	}
	if len(pkgs) != 1 || len(pkgs[0].Syntax) == 0 || pkgs[0].TypesInfo == nil {
		return nil, fmt.Errorf("package %s could not be loaded", path)
	}
	if errs := pkgs[0].Errors; len(errs) > 0 {
		return nil, fmt.Errorf("package %s does not compile: %v", path, errs[0])
	}
	w.sources[path] = pkgs[0]
	return pkgs[0], nil
}

// findTypeSpec returns the package-level declaration of the type name in
// the syntax of pkg.
func findTypeSpec(pkg *packages.Package, name string) (*ast.File, *ast.GenDecl, *ast.TypeSpec) {
	for _, f := range pkg.Syntax {
		for _, d := range f.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok || gd.Tok != token.TYPE {
				continue
			}
			for _, s := range gd.Specs {
				if ts := s.(*ast.TypeSpec); ts.Name.Name == name {
					return f, gd, ts
				}
			}
		}
	}
	return nil, nil, nil
}

// directivesIn returns the comments of cg that start with the directive
// prefix.
func directivesIn(cg *ast.CommentGroup) []*ast.Comment {
	var out []*ast.Comment
	if cg == nil {
		return nil
	}
	for _, c := range cg.List {
		if strings.HasPrefix(c.Text, directivePrefix) {
			out = append(out, c)
		}
	}
	return out
}

func paramNames(fn *types.Func) []string {
	ps := fn.Type().(*types.Signature).Params()
	names := make([]string, ps.Len())
	for i := range names {
		names[i] = ps.At(i).Name()
	}
	return names
}

// lockOf returns the directive of the method name from its declarations.
// A method declared more than once (reached through two embedded
// interfaces, or redeclared) takes a directive only if every declaration
// carries the same one over the same parameter names: otherwise which
// declaration wins would decide whether the method is locked.
func (g *generator) lockOf(name string, decls []methodDecl) *lockSpec {
	var first *methodDecl
	for i := range decls {
		if decls[i].lock != nil {
			first = &decls[i]
			break
		}
	}
	if first == nil {
		return nil
	}
	for _, d := range decls {
		same := d.lock != nil && d.lock.text == first.lock.text && slices.Equal(d.params, first.params) &&
			(first.lock.keyFunc == "" || d.pkg == first.pkg)
		if same {
			continue
		}
		g.errAt(first.lock.pos, "%s is declared in %s and in %s with different directives or parameter names: "+
			"put the same %s line on every declaration of %s, or declare it once",
			name, first.where(), d.where(), lockDirective, name)
		return nil
	}
	return first.lock
}

// where names the declaration for messages: its interface and position.
func (d *methodDecl) where() string {
	if d.pos.Filename == "" {
		return d.owner
	}
	return fmt.Sprintf("%s (%s:%d)", d.owner, relPath(d.pos.Filename), d.pos.Line)
}

// shorten returns a comment's first line, cut to a readable length.
func shorten(text string) string {
	line, _, more := strings.Cut(text, "\n")
	if len(line) > 60 {
		line, more = line[:60], true
	}
	if more {
		line += "..."
	}
	return line
}
