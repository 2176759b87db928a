// Command loadtest is `make load`: several all-in-one instances
// (bin/streamspace, each a process with its own pool, as Knative runs one
// per pod) against one PostgreSQL with max_connections=40, once directly
// and once through PgBouncer in transaction mode, driven by concurrent
// clients mixing tag batches, share reads and version lists. Per mode it
// prints requests per second, p50 and p99 latency, the peak number of
// server connections sampled from pg_stat_activity, and the errors by
// kind, "too many connections" (SQLSTATE 53300) among them.
//
// The bar: no 53300 in either mode, and through PgBouncer a peak at or
// under PgBouncer's pool size however many instances run. Then, unless
// -refusal=false, it fills the server's max_connections with idle
// connections and checks that an instance answers a REST request with 503
// and Retry-After and an event with a 5xx (so the UI and the broker retry),
// and serves again once connections are free. It exits 1 when the bar is
// missed, 2 when the run could not be made.
//
// It needs a PostgreSQL server in libpq's environment (PGHOST, PGPORT,
// PGUSER, PGPASSWORD), a user that may create databases; `make load` runs
// it inside pg_virtualenv -o max_connections=40.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"maps"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/authn/localissuer"
)

// audience is the aud of the clients' tokens.
const audience = "streamspace-api"

// tooManyConnections is PostgreSQL's "sorry, too many clients already".
const tooManyConnections = "53300"

// options are the command line's.
type options struct {
	binary           string
	root             string
	duration         time.Duration
	clients          int
	instances        int
	bouncerInstances int
	poolMax          int
	poolSize         int
	modes            []string
	refusal          bool
}

// mode is one way the instances reach PostgreSQL.
type mode string

const (
	direct    mode = "direct"
	pgbouncer mode = "pgbouncer"
)

// result is one mode's figures.
type result struct {
	mode      mode
	instances int
	poolMax   int
	poolSize  int // PgBouncer's server pool; 0 direct
	samples   []sample
	elapsed   time.Duration
	peak      int
	states    map[string]int // SQLSTATEs the instances logged
}

// bound is the most server connections the mode may use.
func (r result) bound() int {
	if r.poolSize > 0 {
		return r.poolSize
	}
	return r.instances * r.poolMax
}

// tooMany counts the "too many connections" the instances met.
func (r result) tooMany() int { return r.states[tooManyConnections] }

// failures counts the requests that failed, by kind: the status and the
// error body's code, or why no answer came.
func (r result) failures() map[string]int {
	out := map[string]int{}
	for _, s := range r.samples {
		switch {
		case s.status == 0:
			out["no answer: "+s.err]++
		case s.status >= 300:
			out[fmt.Sprintf("%s: %d %s", s.op, s.status, s.code)]++
		}
	}
	return out
}

// missed lists what of the bar the result misses.
func (r result) missed() []string {
	var out []string
	if n := r.tooMany(); n > 0 {
		out = append(out, fmt.Sprintf("%s: %d \"too many connections\" (53300)", r.mode, n))
	}
	if r.peak > r.bound() {
		out = append(out, fmt.Sprintf("%s: peak %d server connections, over %d", r.mode, r.peak, r.bound()))
	}
	if len(latencies(r.samples)) == 0 {
		out = append(out, fmt.Sprintf("%s: no request was answered", r.mode))
	}
	return out
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("loadtest: ")
	var o options
	var modes string
	flag.StringVar(&o.binary, "bin", "bin/streamspace", "the all-in-one binary")
	flag.StringVar(&o.root, "root", ".", "the repository root (for StreamSpace's schema)")
	flag.DurationVar(&o.duration, "duration", 30*time.Second, "how long the clients run in each mode")
	flag.IntVar(&o.clients, "clients", 64, "concurrent clients")
	flag.IntVar(&o.instances, "instances", 9, "all-in-one instances going directly to PostgreSQL")
	flag.IntVar(&o.bouncerInstances, "bouncer-instances", 18, "all-in-one instances going through PgBouncer")
	flag.IntVar(&o.poolMax, "pool-max", 4, "DATABASE_POOL_MAX of every instance")
	flag.IntVar(&o.poolSize, "pool-size", 20, "PgBouncer's default_pool_size and max_db_connections")
	flag.StringVar(&modes, "modes", "direct,pgbouncer", "the modes to run, comma-separated")
	flag.BoolVar(&o.refusal, "refusal", true, "also fill max_connections and check an instance answers 503 with Retry-After, then recovers")
	flag.Parse()
	o.modes = strings.Split(modes, ",")
	for _, m := range o.modes {
		if mode(m) != direct && mode(m) != pgbouncer {
			log.Printf("-modes: unknown mode %q (direct, pgbouncer)", m)
			os.Exit(2)
		}
	}
	if o.clients < 1 || o.instances < 1 || o.bouncerInstances < 1 || o.poolMax < 1 || o.poolSize < 1 || o.duration <= 0 {
		log.Print("-clients, -instances, -bouncer-instances, -pool-max, -pool-size and -duration must be positive")
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	missed, err := run(ctx, o, os.Stdout)
	if err != nil {
		log.Print(err)
		os.Exit(2)
	}
	if len(missed) > 0 {
		fmt.Println("\nThe bar is missed:\n  " + strings.Join(missed, "\n  "))
		os.Exit(1)
	}
	fmt.Println("\nThe bar is met: no \"too many connections\", and through PgBouncer the peak stays within its pool.")
	if !o.refusal {
		return
	}
	fmt.Println("At max_connections an instance answers 503 with Retry-After (an event 5xx) and serves again once connections are free.")
}

// run prepares the database and the token issuer, runs each mode and the
// refusal check, prints the report to w, and returns what of the bar is
// missed.
func run(ctx context.Context, o options, w io.Writer) ([]string, error) {
	srv, err := serverFromEnv()
	if err != nil {
		return nil, err
	}
	admin, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%d user=%s password=%s dbname=postgres sslmode=disable",
		srv.host, srv.port, quote(srv.user), quote(srv.password)))
	if err != nil {
		return nil, fmt.Errorf("connect to PostgreSQL at %s:%d: %w", srv.host, srv.port, err)
	}
	defer admin.Close(context.Background())
	var maxConns, reserved int
	if err := admin.QueryRow(ctx, `select current_setting('max_connections')::int,
		current_setting('superuser_reserved_connections')::int`).Scan(&maxConns, &reserved); err != nil {
		return nil, err
	}
	if err := prepareDatabase(ctx, admin, o.root, o.clients); err != nil {
		return nil, err
	}

	fmt.Fprintf(w, "PostgreSQL max_connections %d (superuser_reserved_connections %d); %d clients, %s per mode\n",
		maxConns, reserved, o.clients, o.duration)
	fmt.Fprintf(w, "direct (with -modes direct): %d instances × DATABASE_POOL_MAX %d (one pool per instance, shared by its functions) = %d connections at most,\n"+
		"  + 1 monitoring connection = %d of %d (%d kept for superusers: %d left for anyone else)\n",
		o.instances, o.poolMax, o.instances*o.poolMax, o.instances*o.poolMax+1, maxConns, reserved, maxConns-reserved)
	fmt.Fprintf(w, "pgbouncer (with -modes pgbouncer): %d instances × %d = %d client connections to PgBouncer, whose server pool is %d\n\n",
		o.bouncerInstances, o.poolMax, o.bouncerInstances*o.poolMax, o.poolSize)

	issuerURL, iss, stopIssuer, err := serveIssuer()
	if err != nil {
		return nil, err
	}
	defer stopIssuer()
	// The instances' logs, kept when the bar is missed.
	logs, err := os.MkdirTemp("", "loadtest-")
	if err != nil {
		return nil, err
	}
	monCfg := admin.Config().Copy()
	mon, err := pgx.ConnectConfig(ctx, monCfg)
	if err != nil {
		return nil, err
	}
	defer mon.Close(context.Background())

	var results []result
	for _, m := range o.modes {
		r := result{mode: mode(m), poolMax: o.poolMax, instances: o.instances}
		dsn := fmt.Sprintf("host=%s port=%d dbname=%s user=%s password=%s sslmode=disable",
			srv.host, srv.port, database, quote(srv.user), quote(srv.password))
		var b *bouncer
		if r.mode == pgbouncer {
			r.instances, r.poolSize = o.bouncerInstances, o.poolSize
			if b, err = startBouncer(ctx, srv, o.poolSize); err != nil {
				return nil, err
			}
			dsn = b.url(srv)
		}
		err := runMode(ctx, o, &r, dsn, issuerURL, iss, logs, mon)
		if b != nil {
			b.stop()
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", m, err)
		}
		results = append(results, r)
	}
	report(w, results)
	var missed []string
	for _, r := range results {
		missed = append(missed, r.missed()...)
	}
	if o.refusal {
		dsn := fmt.Sprintf("host=%s port=%d dbname=%s user=%s password=%s sslmode=disable",
			srv.host, srv.port, database, quote(srv.user), quote(srv.password))
		f, err := checkRefusal(ctx, o, dsn, issuerURL, iss, logs, admin)
		if err != nil {
			return nil, fmt.Errorf("at max_connections: %w", err)
		}
		fmt.Fprintf(w, "\nat max_connections (%d idle connections filled it): REST %d, Retry-After %q; event %d; "+
			"the instance logged 53300 %d times; once they were closed, REST %d\n",
			f.fillers, f.rest, f.retryAfter, f.event, f.logged, f.restAfter)
		missed = append(missed, f.missed()...)
	}
	if len(missed) == 0 {
		return nil, os.RemoveAll(logs)
	}
	fmt.Fprintf(w, "\nThe instances' logs: %s\n", logs)
	return missed, nil
}

// runMode starts r's instances on dsn, drives the clients and fills r.
func runMode(ctx context.Context, o options, r *result, dsn, issuerURL string, iss *localissuer.Issuer, logs string, mon *pgx.Conn) error {
	dir, err := os.MkdirTemp(logs, string(r.mode)+"-")
	if err != nil {
		return err
	}
	instances, err := startInstances(ctx, o.binary, r.instances, instanceEnv(o, dsn, issuerURL), dir)
	if err != nil {
		return err
	}
	defer func() {
		for _, in := range instances {
			in.stop()
		}
	}()
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = o.clients
	httpClient := &http.Client{Transport: transport, Timeout: time.Minute}
	defer transport.CloseIdleConnections()
	clients := make([]*client, o.clients)
	for k := range clients {
		user := fmt.Sprintf("load-%d", k)
		tok, err := iss.Token(user, authn.User, audience, time.Hour)
		if err != nil {
			return err
		}
		clients[k] = &client{http: httpClient, instance: instances[k%len(instances)].url, token: tok, user: user}
	}
	fmt.Fprintf(os.Stderr, "loadtest: %s: %d instances ready, %d clients for %s\n", r.mode, len(instances), len(clients), o.duration)
	r.samples, r.peak, r.elapsed, err = drive(ctx, clients, o.duration, mon)
	if err != nil {
		return err
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	r.states, err = logStates(instances)
	return err
}

// instanceEnv is the environment of an instance reaching its database at
// dsn and trusting the clients' token issuer.
func instanceEnv(o options, dsn, issuerURL string) []string {
	return []string{
		"DATABASE_URL=" + dsn,
		"DATABASE_POOL_MAX=" + strconv.Itoa(o.poolMax),
		"AUTH_ISSUER=" + issuerURL,
		"AUTH_AUDIENCE=" + audience,
		"AUTH_JWKS_URL=" + issuerURL,
		// Nothing receives the events the functions emit; they stay queued.
		"K_SINK=",
		"STREAMSPACE_JWT_SECRET_FILE=",
		"EVENT_AUTH_ISSUER=",
	}
}

// report prints one row per mode, then the errors by kind.
func report(w io.Writer, results []result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "mode\tinstances\tpool max\tanswered\treq/s\tp50\tp99\tpeak server conns\tbound\t53300\tfailed\t")
	for _, r := range results {
		lat := latencies(r.samples)
		failed := 0
		for _, n := range r.failures() {
			failed += n
		}
		bound := fmt.Sprintf("%d", r.bound())
		if r.poolSize > 0 {
			bound = fmt.Sprintf("pool %d", r.poolSize)
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%.1f\t%s\t%s\t%d\t%s\t%d\t%d\t\n",
			r.mode, r.instances, r.poolMax, len(lat), float64(len(lat))/r.elapsed.Seconds(),
			percentile(lat, 50).Round(100*time.Microsecond), percentile(lat, 99).Round(100*time.Microsecond),
			r.peak, bound, r.tooMany(), failed)
	}
	tw.Flush()
	for _, r := range results {
		byOp := map[operation]int{}
		for _, s := range r.samples {
			if s.status != 0 {
				byOp[s.op]++
			}
		}
		fmt.Fprintf(w, "\n%s: answered %d tag batches, %d share reads, %d version lists\n", r.mode, byOp[tagBatch], byOp[shareRead], byOp[versionList])
		failures := r.failures()
		if len(failures) == 0 {
			fmt.Fprintf(w, "%s: no request failed\n", r.mode)
		}
		for _, kind := range slices.Sorted(maps.Keys(failures)) {
			fmt.Fprintf(w, "%s: failed %d × %s\n", r.mode, failures[kind], kind)
		}
		for _, state := range slices.Sorted(maps.Keys(r.states)) {
			fmt.Fprintf(w, "%s: the instances logged SQLSTATE %s %d times\n", r.mode, state, r.states[state])
		}
	}
}

// serverFromEnv reads PostgreSQL's address and credentials from libpq's
// environment.
func serverFromEnv() (server, error) {
	srv := server{host: os.Getenv("PGHOST"), user: os.Getenv("PGUSER"), password: os.Getenv("PGPASSWORD")}
	port, err := strconv.Atoi(os.Getenv("PGPORT"))
	if err != nil || srv.host == "" || srv.user == "" {
		return server{}, fmt.Errorf("PGHOST, PGPORT and PGUSER must name a PostgreSQL server " +
			"(make load runs this under pg_virtualenv -o max_connections=40, which sets them)")
	}
	srv.port = uint16(port)
	return srv, nil
}

// serveIssuer serves a token issuer's JWKS on a loopback port for the
// instances to verify the clients' tokens with.
func serveIssuer() (string, *localissuer.Issuer, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, nil, err
	}
	url := "http://" + ln.Addr().String()
	iss, err := localissuer.New(url)
	if err != nil {
		ln.Close()
		return "", nil, nil, err
	}
	s := &http.Server{Handler: iss.JWKSHandler(), ReadHeaderTimeout: 10 * time.Second}
	go s.Serve(ln)
	return url, iss, func() { s.Close() }, nil
}
