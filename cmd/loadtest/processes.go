package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// readyTimeout bounds how long a process may take to be ready; a busy
// machine is slow, a process that never gets there has failed.
const readyTimeout = 2 * time.Minute

// freePort returns a loopback port nothing listens on.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// server is where PostgreSQL is, from libpq's environment (pg_virtualenv
// exports it).
type server struct {
	host     string
	port     uint16
	user     string
	password string
}

// bouncer is a PgBouncer this program started.
type bouncer struct {
	cmd  *exec.Cmd
	port int
	dir  string
	pool int
}

// pgbouncerIni is PgBouncer in transaction mode as deploy/components/
// pgbouncer runs it, in front of the load database: a server pool of
// poolSize connections whatever the number of clients, no reserve, and the
// same timeouts. auth_type plain with the server's own user, as
// scripts/with-pgbouncer does.
const pgbouncerIni = `[databases]
%[1]s = host=%[2]s port=%[3]d dbname=%[1]s

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %[4]d
unix_socket_dir =
auth_type = plain
auth_file = %[5]s
pool_mode = transaction
server_reset_query =
ignore_startup_parameters = extra_float_digits
default_pool_size = %[6]d
max_db_connections = %[6]d
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 1000
query_timeout = 30
query_wait_timeout = 10
server_idle_timeout = 60
log_connections = 0
log_disconnections = 0
logfile = %[7]s
`

// startBouncer starts Debian's PgBouncer (1.18 here) in the foreground, as
// the postgres user when this program runs as root (PgBouncer refuses
// root), and waits until it answers.
func startBouncer(ctx context.Context, srv server, poolSize int) (*bouncer, error) {
	path, err := exec.LookPath("pgbouncer")
	if err != nil {
		path = "/usr/sbin/pgbouncer"
		if _, err := os.Stat(path); err != nil {
			return nil, errors.New("pgbouncer is missing (apt-get install -y pgbouncer)")
		}
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "loadtest-pgbouncer-")
	if err != nil {
		return nil, err
	}
	b := &bouncer{port: port, dir: dir, pool: poolSize}
	users := filepath.Join(dir, "users.txt")
	if err := os.WriteFile(users, fmt.Appendf(nil, "%q %q\n", srv.user, srv.password), 0o600); err != nil {
		return nil, err
	}
	ini := filepath.Join(dir, "pgbouncer.ini")
	if err := os.WriteFile(ini, fmt.Appendf(nil, pgbouncerIni, database, srv.host, srv.port, port, users, poolSize,
		filepath.Join(dir, "pgbouncer.log")), 0o600); err != nil {
		return nil, err
	}
	args := []string{ini}
	if os.Geteuid() == 0 {
		pg, err := user.Lookup("postgres")
		if err != nil {
			return nil, fmt.Errorf("PgBouncer refuses to run as root and there is no postgres user: %w", err)
		}
		uid, _ := strconv.Atoi(pg.Uid)
		gid, _ := strconv.Atoi(pg.Gid)
		for _, f := range []string{dir, users, ini} {
			if err := os.Chown(f, uid, gid); err != nil {
				return nil, err
			}
		}
		args = append([]string{"-u", "postgres"}, args...)
	}
	b.cmd = exec.Command(path, args...)
	// In the foreground PgBouncer logs to stderr as well as its logfile.
	out, err := os.Create(filepath.Join(dir, "pgbouncer.out"))
	if err != nil {
		return nil, err
	}
	defer out.Close()
	b.cmd.Stdout, b.cmd.Stderr = out, out
	if err := b.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start PgBouncer: %w", err)
	}
	cfg, err := pgx.ParseConfig(b.url(srv))
	if err != nil {
		b.stop()
		return nil, err
	}
	err = waitFor(ctx, nil, func(ctx context.Context) bool {
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			return false
		}
		conn.Close(ctx)
		return true
	})
	if err != nil {
		b.stop()
		return nil, fmt.Errorf("PgBouncer did not answer on 127.0.0.1:%d (log %s): %w", port, filepath.Join(dir, "pgbouncer.log"), err)
	}
	return b, nil
}

// url is the functions' DATABASE_URL through b.
func (b *bouncer) url(srv server) string {
	return fmt.Sprintf("host=127.0.0.1 port=%d dbname=%s user=%s password=%s sslmode=disable",
		b.port, database, quote(srv.user), quote(srv.password))
}

func (b *bouncer) stop() {
	if b.cmd.Process != nil {
		_ = b.cmd.Process.Signal(syscall.SIGTERM)
		_ = b.cmd.Wait()
	}
	os.RemoveAll(b.dir)
}

// quote writes a keyword/value connection string value.
func quote(s string) string {
	out := []byte{'\''}
	for _, c := range []byte(s) {
		if c == '\'' || c == '\\' {
			out = append(out, '\\')
		}
		out = append(out, c)
	}
	return string(append(out, '\''))
}

// instance is one all-in-one process (bin/streamspace), with its own pool,
// as Knative runs one per pod.
type instance struct {
	cmd    *exec.Cmd
	url    string
	log    string
	exited chan struct{} // closed when the process has ended
}

// startInstances starts n all-in-one processes with env (their
// DATABASE_URL, pool size and token issuer) and waits until every one is
// ready. Each writes its JSON log to a file in dir.
func startInstances(ctx context.Context, binary string, n int, env []string, dir string) ([]*instance, error) {
	var all []*instance
	stopAll := func() {
		for _, in := range all {
			in.stop()
		}
	}
	for i := range n {
		port, err := freePort()
		if err != nil {
			stopAll()
			return nil, err
		}
		in := &instance{url: fmt.Sprintf("http://127.0.0.1:%d", port), log: filepath.Join(dir, fmt.Sprintf("instance-%d.log", i)),
			exited: make(chan struct{})}
		logFile, err := os.Create(in.log)
		if err != nil {
			stopAll()
			return nil, err
		}
		in.cmd = exec.Command(binary)
		in.cmd.Env = append(append(os.Environ(), env...), "PORT="+strconv.Itoa(port))
		in.cmd.Stdout, in.cmd.Stderr = logFile, logFile
		err = in.cmd.Start()
		logFile.Close()
		if err != nil {
			stopAll()
			return nil, fmt.Errorf("start %s: %w", binary, err)
		}
		go func() {
			_ = in.cmd.Wait()
			close(in.exited)
		}()
		all = append(all, in)
	}
	for i, in := range all {
		err := waitFor(ctx, in.exited, func(ctx context.Context) bool {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, in.url+"/health/readiness", nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		})
		if err != nil {
			stopAll()
			return nil, fmt.Errorf("instance %d is not ready (log %s): %w", i, in.log, err)
		}
	}
	return all, nil
}

// stop asks the instance to drain and end, as Knative does.
func (in *instance) stop() {
	_ = in.cmd.Process.Signal(syscall.SIGTERM)
	<-in.exited
}

// waitFor polls ready until it is true, readyTimeout passes, ctx ends or
// exited (nil for none) is closed: the process gave up.
func waitFor(ctx context.Context, exited <-chan struct{}, ready func(context.Context) bool) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		attempt, done := context.WithTimeout(ctx, 5*time.Second)
		ok := ready(attempt)
		done()
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-exited:
			return errors.New("the process ended")
		case <-tick.C:
		}
	}
}
