package decorator_test

import (
	"context"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/txlock/txlock/dblock"
	"github.com/txlock/txlock/decorator"
)

// The overhead of a decorated call over a direct Locker.Do, one goroutine
// on its own key, the lock taken and released (BEGIN, SELECT ... FOR
// UPDATE, COMMIT) on every call. Compare BenchmarkWithLock and
// BenchmarkCall with BenchmarkDo of the same run, or read the ratio that
// BenchmarkOverhead reports.

type benchReq struct{ ID string }

func benchKey() decorator.KeyFunc[benchReq] {
	return decorator.ResourceKey("bench:", func(r benchReq) string { return r.ID })
}

func BenchmarkDo(b *testing.B) {
	e := newEnv(b)
	ctx := context.Background()
	r := benchReq{ID: "1"}
	b.ReportAllocs()
	for b.Loop() {
		var out int
		err := e.locker.Do(ctx, dblock.Resource("bench:"+r.ID), func(ctx context.Context, tx *gorm.DB) error {
			out = len(r.ID)
			return nil
		})
		if err != nil || out != 1 {
			b.Fatal(err)
		}
	}
}

func BenchmarkWithLock(b *testing.B) {
	e := newEnv(b)
	ctx := context.Background()
	fn := decorator.WithLock(e.locker, benchKey(), func(ctx context.Context, r benchReq) (int, error) { return len(r.ID), nil })
	r := benchReq{ID: "1"}
	b.ReportAllocs()
	for b.Loop() {
		if out, err := fn(ctx, r); err != nil || out != 1 {
			b.Fatal(err)
		}
	}
}

func BenchmarkCall(b *testing.B) {
	e := newEnv(b)
	ctx := context.Background()
	r := benchReq{ID: "1"}
	b.ReportAllocs()
	for b.Loop() {
		var out int
		err := decorator.Call(ctx, e.locker, "Bench.Call", dblock.Resource("bench:"+r.ID), func(ctx context.Context) error {
			out = len(r.ID)
			return nil
		})
		if err != nil || out != 1 {
			b.Fatal(err)
		}
	}
}

// BenchmarkOverhead alternates batches of direct Do and decorated calls in
// one run, so that both see the same server conditions, and reports
// decorated-ns/op over direct-ns/op as the metric "ratio".
func BenchmarkOverhead(b *testing.B) {
	e := newEnv(b)
	ctx := context.Background()
	fn := decorator.WithLock(e.locker, benchKey(), func(ctx context.Context, r benchReq) (int, error) { return len(r.ID), nil })
	r := benchReq{ID: "1"}
	direct := func() error {
		return e.locker.Do(ctx, dblock.Resource("bench:"+r.ID), func(context.Context, *gorm.DB) error { return nil })
	}
	decorated := func() error { _, err := fn(ctx, r); return err }
	const batch = 50
	var tDirect, tDecorated time.Duration
	var n int
	for b.Loop() {
		for i, f := range []func() error{direct, decorated} {
			start := time.Now()
			for range batch {
				if err := f(); err != nil {
					b.Fatal(err)
				}
			}
			if i == 0 {
				tDirect += time.Since(start)
			} else {
				tDecorated += time.Since(start)
			}
		}
		n += batch
	}
	b.ReportMetric(float64(tDirect.Nanoseconds())/float64(n), "direct-ns/op")
	b.ReportMetric(float64(tDecorated.Nanoseconds())/float64(n), "decorated-ns/op")
	b.ReportMetric(float64(tDecorated)/float64(tDirect), "ratio")
}
