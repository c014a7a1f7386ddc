// Package follow holds interfaces whose methods come from embedded
// interfaces (generic ones, another package's) and defined interfaces:
// their directives must be honoured (see build_test.go).
package follow

import (
	"context"
	"io"

	"github.com/txlock/txlock/cmd/txlockgen/testdata/build/follow/other"
)

type Req struct{ ID string }

// Repo is generic: its directives hold in every instantiation.
type Repo[R any] interface {
	//txlock:lock resource=repo:{ID}
	Save(ctx context.Context, r R) error
	Find(ctx context.Context, id string) (R, error)
}

type Base interface {
	//txlock:lock global
	Run(ctx context.Context) error
}

// Defined is defined from Base: Base's directives hold.
type Defined Base

// ViaDefined embeds a defined interface.
type ViaDefined interface{ Defined }

// Embeds embeds a generic interface, a local one, another package's with
// directives, and one of the standard library.
type Embeds interface {
	Repo[Req]
	Base
	other.Jobs
	io.Closer

	//txlock:lock method
	Own(ctx context.Context) error
}

// Redeclared declares Base's Run again, with the same directive.
type Redeclared interface {
	Base
	//txlock:lock global
	Run(ctx context.Context) error
}

// A grouped declaration: generating one reads only its own spec.
type (
	GroupA interface {
		//txlock:lock operation=a
		A(ctx context.Context) error
	}

	GroupB interface {
		//txlock:lock operation=b
		B(ctx context.Context) error
	}
)
