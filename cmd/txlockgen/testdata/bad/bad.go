// Package bad holds interfaces whose directives txlockgen must reject,
// one interface per mistake (see bad_test.go).
package bad

import (
	"context"
	"io"

	"github.com/txlock/txlock/dblock"
)

type Req struct {
	ID     string
	Amount float64
	Inner  *Inner
}

type Inner struct{ Name string }

func (i *Inner) Label(prefix string) string { return prefix + i.Name }

type UnknownTerm interface {
	//txlock:lock tenant=ID
	M(ctx context.Context, r Req) error
}

type UnknownDirective interface {
	//txlock:unlock resource=ID
	M(ctx context.Context, r Req) error
}

type NoKey interface {
	//txlock:lock wait=2s
	M(ctx context.Context, r Req) error
}

type MissingKeyFunc interface {
	//txlock:lock key=nowhere
	M(ctx context.Context, r Req) error
}

type EmptyKeyFunc interface {
	//txlock:lock key=
	M(ctx context.Context, r Req) error
}

func wrongKey(r Req) dblock.Key { return dblock.Resource(r.ID) }

type WrongKeyFunc interface {
	//txlock:lock key=wrongKey
	M(ctx context.Context, r Req) error
}

type NoContext interface {
	//txlock:lock resource=order:{ID}
	M(r Req) error
}

type NoError interface {
	//txlock:lock resource=order:{ID}
	M(ctx context.Context, r Req) string
}

type MissingField interface {
	//txlock:lock resource=order:{OrderID}
	M(ctx context.Context, r Req) error
}

type UnsupportedType interface {
	//txlock:lock resource=amount:{Amount}
	M(ctx context.Context, r Req) error
}

type MethodWithArgs interface {
	//txlock:lock resource=Inner.Label
	M(ctx context.Context, r Req) error
}

type NoRequest interface {
	//txlock:lock resource=ID
	M(ctx context.Context) error
}

type GlobalAndMore interface {
	//txlock:lock global resource=ID
	M(ctx context.Context, r Req) error
}

type WaitAndNoWait interface {
	//txlock:lock method wait=1s nowait
	M(ctx context.Context, r Req) error
}

type BadWait interface {
	//txlock:lock method wait=soon
	M(ctx context.Context, r Req) error
}

type BadTemplate interface {
	//txlock:lock resource=order:{ID
	M(ctx context.Context, r Req) error
}

type TwoDirectives interface {
	//txlock:lock method
	//txlock:lock resource=ID
	M(ctx context.Context, r Req) error
}

//txlock:lock global
type Misplaced interface {
	M(ctx context.Context, r Req) error
}

type OnEmbedded interface {
	//txlock:lock global
	io.Closer
}

type NotAnInterface struct{}
