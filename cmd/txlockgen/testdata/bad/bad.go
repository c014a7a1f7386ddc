// Package bad holds interfaces whose directives txlockgen must reject,
// one interface per mistake (see TestBadDirectives in gen_test.go).
package bad

import (
	"context"
	"io"
	"time"

	"github.com/txlock/txlock/cmd/txlockgen/testdata/build/follow/other"
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

type LookAlikeSpace interface {
	// txlock:lock resource=order:{ID}
	M(ctx context.Context, r Req) error
}

type LookAlikeBlock interface {
	/*txlock:lock global*/
	M(ctx context.Context, r Req) error
}

type LookAlikeUpper interface {
	//TXLOCK:lock global
	M(ctx context.Context, r Req) error
}

type lookBase interface {
	//	txlock:lock global
	M(ctx context.Context, r Req) error
}

// LookAlikeEmbedded embeds an interface with a look-alike.
type BadMaxHold interface {
	//txlock:lock method maxhold=-1s
	M(ctx context.Context, r Req) error
}

type BadMinInterval interface {
	//txlock:lock method mininterval
	M(ctx context.Context, r Req) error
}

type SharedMinInterval interface {
	//txlock:lock shared operation=nightly mininterval=1h
	M(ctx context.Context, r Req) error
}

type SharedWithValue interface {
	//txlock:lock shared=yes resource=doc:{ID}
	M(ctx context.Context, r Req) error
}

type SharedTwice interface {
	//txlock:lock shared resource=doc:{ID} shared
	M(ctx context.Context, r Req) error
}

type SharedNoKey interface {
	//txlock:lock shared wait=1s
	M(ctx context.Context, r Req) error
}

type PermitsShared interface {
	//txlock:lock permits=3 shared operation=export
	M(ctx context.Context, r Req) error
}

type PermitsMinInterval interface {
	//txlock:lock permits=3 operation=export mininterval=1h
	M(ctx context.Context, r Req) error
}

type PermitsZero interface {
	//txlock:lock permits=0 operation=export
	M(ctx context.Context, r Req) error
}

type PermitsTooMany interface {
	//txlock:lock permits=1001 operation=export
	M(ctx context.Context, r Req) error
}

type PermitsNotANumber interface {
	//txlock:lock permits=five operation=export
	M(ctx context.Context, r Req) error
}

type PermitsNoValue interface {
	//txlock:lock permits operation=export
	M(ctx context.Context, r Req) error
}

type PermitsMissingSpace interface {
	//txlock:lock resource=job:{ID}permits=3
	M(ctx context.Context, r Req) error
}

type PermitsDiffer interface {
	//txlock:lock permits=3 operation=export
	A(ctx context.Context, r Req) error
	//txlock:lock operation=export permits=4 nowait
	B(ctx context.Context, r Req) error
}

type MissingSpaceMaxHold interface {
	//txlock:lock resource=job:{ID}maxhold=1s
	M(ctx context.Context, r Req) error
}

type LookAlikeEmbedded interface{ lookBase }

type MissingSpace interface {
	//txlock:lock resource=order:{ID}wait=2s
	M(ctx context.Context, r Req) error
}

type MissingSpaceOperation interface {
	//txlock:lock operation=refundwait=1s
	M(ctx context.Context, r Req) error
}

type EqualsInKey interface {
	//txlock:lock resource=a=b
	M(ctx context.Context, r Req) error
}

// Stamp has time.Time's String, which includes the monotonic reading.
type Stamp struct{ time.Time }

type Stamped struct{ At Stamp }

type TimeStringer interface {
	//txlock:lock resource=at:{At}
	M(ctx context.Context, r Stamped) error
}

// OwnStamp embeds time.Time and declares a String of its own: refused all
// the same, as package decorator refuses it, which cannot tell the two
// apart at run time.
type OwnStamp struct{ *time.Time }

func (s OwnStamp) String() string { return s.UTC().Format(time.RFC3339Nano) }

type OwnStamped struct{ At *OwnStamp }

type OwnTimeStringer interface {
	//txlock:lock resource=at:{At}
	M(ctx context.Context, r OwnStamped) error
}

type dupA interface {
	//txlock:lock global
	M(ctx context.Context) error
}

type dupB interface {
	M(ctx context.Context) error
}

// Duplicate has M from two interfaces, one with a directive.
type Duplicate interface {
	dupA
	dupB
}

type badBase interface {
	//txlock:lock tenant=ID
	M(ctx context.Context, r Req) error
}

type EmbeddedBadDirective interface{ badBase }

type DefinedBadDirective badBase

type misBase interface {
	//txlock:lock global

	M(ctx context.Context, r Req) error
}

type EmbeddedMisplaced interface{ misBase }

type ForeignPrivateKey interface{ other.Private }
