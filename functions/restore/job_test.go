package function_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io/fs"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/streamspace-dev/functions/events"
	function "github.com/streamspace-dev/functions/functions/restore"
	"github.com/streamspace-dev/functions/shared/authn"
	"github.com/streamspace-dev/functions/shared/db"
	"github.com/streamspace-dev/functions/shared/fntest"
	"github.com/streamspace-dev/functions/shared/homesnap"
	"github.com/streamspace-dev/functions/shared/kubetest"
	"github.com/streamspace-dev/functions/shared/s3test"
)

// functionsNamespace is where the function's ServiceAccount lives, apart
// from the sessions (docs/restore.md).
const functionsNamespace = "streamspace-functions"

// world is a running restore function with real PostgreSQL, MinIO and
// kube-apiserver, one user with one running session whose pod's /config is
// a folder of this machine.
type world struct {
	h       *fntest.Harness
	s3      *s3test.Server
	bucket  string
	cluster *kubetest.Cluster
	ns      string
	pod     *kubetest.Pod
	session string
	user    string
	uid     int
	// sse and kmsKey are the world's S3_SSE and S3_SSE_KMS_KEY_ID: the
	// encryption the snapshots it stores get, and the backups must get.
	sse    types.ServerSideEncryption
	kmsKey string
	// lease is the last job lease the function took.
	lease atomic.Pointer[db.Lease]
}

// newWorld starts everything; wrap, when not nil, wraps the job's storage
// and pod clients with a fault.
func newWorld(t *testing.T, wrap func(w *world, o function.Objects, p function.Pods) (function.Objects, function.Pods), extra ...map[string]string) *world {
	return newWorldWithExec(t, wrap, nil, extra...)
}

// newWorldWithExec is newWorld with the verbs the function's Role grants
// on pods/exec; nil grants the deployed Role's.
func newWorldWithExec(t *testing.T, wrap func(w *world, o function.Objects, p function.Pods) (function.Objects, function.Pods),
	execVerbs []string, extra ...map[string]string) *world {
	t.Helper()
	w := &world{s3: s3test.Start(t), cluster: kubetest.Start(t), session: "s-1", user: "alice", uid: 4242}
	w.bucket = w.s3.Bucket(t)
	w.ns = w.cluster.Namespace(t)
	kubelet := w.cluster.Kubelet(t)
	w.pod = kubelet.Pod(t, w.ns, kubetest.PodSpec{SessionID: w.session,
		Env: map[string]string{"PUID": strconv.Itoa(w.uid), "PGID": strconv.Itoa(w.uid)}})
	sessionRole(t, w.cluster, w.ns, "restore", execVerbs)

	env := w.s3.Env(w.bucket)
	env["KUBECONFIG"] = kubeconfig(t, w.cluster, "restore")
	env["STREAMSPACE_NAMESPACE"] = w.ns
	env["RESTORE_LEASE_TTL"] = "3s"
	for _, e := range extra {
		maps.Copy(env, e)
	}
	w.sse, w.kmsKey = types.ServerSideEncryption(env["S3_SSE"]), env["S3_SSE_KMS_KEY_ID"]
	f := function.WithLeases(function.New(), func(l *db.Lease) { w.lease.Store(l) })
	if wrap != nil {
		function.WithFaults(f, func(o function.Objects, p function.Pods) (function.Objects, function.Pods) { return wrap(w, o, p) })
	}
	w.h = fntest.Start(t, f, env)
	w.h.AddUser(w.user, authn.User)
	w.h.AddUser("root", authn.Admin)
	sqlExec(t, w.h, `insert into sessions (id, user_id, template_name, state, namespace) values ($1, $2, 'firefox', 'running', $3)`,
		w.session, w.user, w.ns)
	return w
}

// sessionRole is what the restore function's Role grants in the sessions'
// namespace (deploy/functions/restore/role.yaml), bound to its
// ServiceAccount, with execVerbs on pods/exec instead of its get and create
// when given. It returns once the binding is in force.
func sessionRole(t *testing.T, c *kubetest.Cluster, ns, sa string, execVerbs []string) {
	t.Helper()
	ctx := context.Background()
	if execVerbs == nil {
		// A WebSocket exec (a GET) needs get and, on 1.35, create; SPDY's
		// POST needs create.
		execVerbs = []string{"get", "create"}
	}
	rules := []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list"}},
		{APIGroups: []string{""}, Resources: []string{"pods/exec"}, Verbs: execVerbs},
	}
	_, err := c.Client.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: "restore-sessions"}, Rules: rules}, metav1.CreateOptions{})
	require.NoError(t, err)
	_, err = c.Client.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "restore-sessions"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: "restore-sessions"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa, Namespace: functionsNamespace}},
	}, metav1.CreateOptions{})
	require.NoError(t, err)
	as, err := kubernetes.NewForConfig(c.ServiceAccountConfig(functionsNamespace, sa))
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		_, err := as.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		return err == nil
	}, wait, 20*time.Millisecond, "the RoleBinding never took effect")
}

// kubeconfig writes a kubeconfig that reaches the cluster as the
// ServiceAccount sa, by impersonation, so RBAC decides what it may do.
func kubeconfig(t *testing.T, c *kubetest.Cluster, sa string) string {
	t.Helper()
	rc := c.ServiceAccountConfig(functionsNamespace, sa)
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["c"] = &clientcmdapi.Cluster{Server: rc.Host, InsecureSkipTLSVerify: true}
	cfg.AuthInfos["u"] = &clientcmdapi.AuthInfo{Token: rc.BearerToken, Impersonate: rc.Impersonate.UserName,
		ImpersonateGroups: rc.Impersonate.Groups}
	cfg.Contexts["c"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "u"}
	cfg.CurrentContext = "c"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	require.NoError(t, clientcmd.WriteToFile(*cfg, path))
	return path
}

// storeSnapshot archives dir with GNU tar (as a snapshot stores it:
// tar.gz of "."), uploads it and its manifest, and adds the available
// snapshot row. The manifest is computed from the archive as stored, so an
// archive that fails the vet does so on its content, not on its checksum.
func (w *world) storeSnapshot(t *testing.T, dir string) string {
	t.Helper()
	cmd := exec.Command("tar", "-czf", "-", "-C", dir, ".")
	data, err := cmd.Output()
	require.NoError(t, err)
	return w.storeArchive(t, data, nil)
}

// storeArchive uploads data as a snapshot with its manifest, in the
// snapshot function's format; man overrides manifest fields computed from
// data.
func (w *world) storeArchive(t *testing.T, data []byte, man map[string]any) string {
	t.Helper()
	id := addSnapshot(t, w.h, w.session, w.user, "available")
	key := homesnap.ArchiveKey(w.user, w.session, id)
	out, err := w.s3.Client().PutObject(context.Background(), w.encrypted(&s3.PutObjectInput{
		Bucket: aws.String(w.bucket), Key: aws.String(key), Body: bytes.NewReader(data)}))
	require.NoError(t, err)
	var entries, content int64
	if _, given := man["entries"]; !given {
		entries, content = countEntries(t, data)
	}
	sum := sha256.Sum256(data)
	m := map[string]any{"version": 1, "archive": key, "etag": aws.ToString(out.ETag), "sha256": hex.EncodeToString(sum[:]),
		"sizeBytes": len(data), "entries": entries, "contentBytes": content, "compression": "gzip"}
	maps.Copy(m, man)
	raw, err := json.Marshal(m)
	require.NoError(t, err)
	_, err = w.s3.Client().PutObject(context.Background(), w.encrypted(&s3.PutObjectInput{
		Bucket: aws.String(w.bucket), Key: aws.String(homesnap.ManifestKey(key)), Body: bytes.NewReader(raw)}))
	require.NoError(t, err)
	return id
}

// encrypted asks for the world's server-side encryption on in.
func (w *world) encrypted(in *s3.PutObjectInput) *s3.PutObjectInput {
	in.ServerSideEncryption = w.sse
	if w.kmsKey != "" {
		in.SSEKMSKeyId = aws.String(w.kmsKey)
	}
	return in
}

// assertEncrypted checks that key is stored with the world's server-side
// encryption.
func (w *world) assertEncrypted(t *testing.T, key string) {
	t.Helper()
	head, err := w.s3.Client().HeadObject(context.Background(), &s3.HeadObjectInput{Bucket: aws.String(w.bucket), Key: aws.String(key)})
	require.NoError(t, err)
	assert.Equal(t, w.sse, head.ServerSideEncryption, "%s is stored encrypted as S3_SSE asks", key)
	if w.kmsKey != "" {
		assert.Equal(t, "arn:aws:kms:"+w.kmsKey, aws.ToString(head.SSEKMSKeyId), "%s's KMS key", key)
	}
}

// countEntries counts a tar.gz's entries and content bytes with no
// judgement of them (the manifest of a hostile archive is still correct).
func countEntries(t *testing.T, data []byte) (entries, size int64) {
	t.Helper()
	cmd := exec.Command("tar", "-tvzf", "-")
	cmd.Stdin = bytes.NewReader(data)
	out, err := cmd.Output()
	require.NoError(t, err)
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		entries++
		f := strings.Fields(line)
		if strings.HasPrefix(f[0], "-") {
			n, err := strconv.ParseInt(f[2], 10, 64)
			require.NoError(t, err)
			size += n
		}
	}
	return entries, size
}

// request posts a restore of snapshot, with no body, and returns the job id
// and the requested event, which the test delivers itself.
func (w *world) request(t *testing.T, snapshot string) (string, cloudevents.Event) {
	t.Helper()
	return w.requestInto(t, snapshot, "")
}

// requestInto is request into the session target; "" sends no body, so
// the snapshot's own session is the target.
func (w *world) requestInto(t *testing.T, snapshot, target string) (string, cloudevents.Event) {
	t.Helper()
	var req any
	if target != "" {
		req = map[string]string{"targetSessionId": target}
	}
	status, body := w.h.Do(http.MethodPost, restorePath(w.session, snapshot), w.h.Token(w.user, authn.User), req)
	require.Equal(t, http.StatusAccepted, status, "%s", body)
	var res function.RestoreResult
	require.NoError(t, json.Unmarshal(body, &res))
	var e cloudevents.Event
	require.Eventually(t, func() bool {
		for _, ev := range w.h.Sink.Events() {
			var d events.RestoreRequestedData
			if ev.Type() == events.RestoreRequested && ev.DataAs(&d) == nil && d.RestoreJobID == res.RestoreJobID {
				e = ev
				return true
			}
		}
		return false
	}, wait, 20*time.Millisecond)
	return res.RestoreJobID, e
}

// jobRow is what the job's row and its snapshots say.
type jobRow struct {
	Status, Error, SnapshotStatus string
	Progress                      function.Progress
	RolledBack, RollbackFailed    bool
	Backup                        string
}

func (w *world) job(t *testing.T, snapshot, id string) jobRow {
	t.Helper()
	status, body := w.h.Do(http.MethodGet, restorePath(w.session, snapshot)+"/status", w.h.Token(w.user, authn.User), nil)
	require.Equal(t, http.StatusOK, status, "%s", body)
	var res function.StatusResult
	require.NoError(t, json.Unmarshal(body, &res))
	var r jobRow
	for _, j := range res.RestoreJobs {
		if j.ID == id {
			r = jobRow{Status: string(j.Status), Error: j.ErrorMessage, Progress: j.Progress, RolledBack: j.RolledBack,
				RollbackFailed: j.RollbackFailed, Backup: j.BackupSnapshotID}
		}
	}
	require.NoError(t, w.h.Pool.QueryRow(context.Background(), `select status from session_snapshots where id = $1`, snapshot).Scan(&r.SnapshotStatus))
	return r
}

// fileState describes every path under root: type, permissions, owner,
// content hash or link target.
func fileState(t *testing.T, root string) map[string]string {
	t.Helper()
	state := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		info, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := info.Sys().(*syscall.Stat_t)
		owner := strconv.Itoa(int(st.Uid)) + ":" + strconv.Itoa(int(st.Gid))
		switch {
		case info.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			state[rel] = "link " + target
			return err
		case info.IsDir():
			state[rel] = "dir " + info.Mode().Perm().String() + " " + owner
		default:
			body, err := os.ReadFile(p)
			sum := sha256.Sum256(body)
			state[rel] = "file " + info.Mode().Perm().String() + " " + owner + " " + hex.EncodeToString(sum[:])
			return err
		}
		return nil
	})
	require.NoError(t, err)
	return state
}

// contentState is fileState without owners: what a restore must reproduce
// before chown gives every file to the session's user.
func contentState(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for k, v := range fileState(t, root) {
		f := strings.Fields(v)
		if f[0] != "link" {
			f = append(f[:2], f[3:]...)
		}
		out[k] = strings.Join(f, " ")
	}
	return out
}

// writeTree fills root with files.
func writeTree(t *testing.T, root string, files map[string]string) {
	t.Helper()
	for rel, body := range files {
		p := filepath.Join(root, rel)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		if target, ok := strings.CutPrefix(body, "->"); ok {
			require.NoError(t, os.Symlink(target, p))
			continue
		}
		require.NoError(t, os.WriteFile(p, []byte(body), 0o644))
	}
}

// homeBefore is the session's /config before a restore.
var homeBefore = map[string]string{
	".bashrc":                 "export BEFORE=1\n",
	"Documents/draft.txt":     "written after the snapshot",
	".config/app/state.json":  `{"state":"current"}`,
	"link-to-draft":           "->Documents/draft.txt",
	"only-before/nested/file": "goes away on a restore",
}

// homeSnapshot is what the snapshot holds.
var homeSnapshot = map[string]string{
	".bashrc":                "export SNAPSHOT=1\n",
	"Documents/notes.txt":    strings.Repeat("notes in the snapshot\n", 20000),
	".config/app/state.json": `{"state":"snapshot"}`,
	"bin/tool":               "#!/bin/sh\n",
	"notes":                  "->Documents/notes.txt",
	"up/back":                "->../Documents",
}

func snapshotDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	writeTree(t, dir, homeSnapshot)
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "empty", "dir"), 0o755))
	return dir
}

// deliver sends the requested event and returns the status.
func (w *world) deliver(t *testing.T, e cloudevents.Event) int {
	t.Helper()
	status, _ := w.h.Deliver(e, false)
	return status
}

// TestRestoreJob restores a snapshot into a session over each pods/exec
// protocol: /config becomes the snapshot, owned by the session's user, and
// the backup holds what it was.
func TestRestoreJob(t *testing.T) {
	tests := []struct {
		name      string
		protocol  string
		execVerbs []string
		env       map[string]string
	}{
		{name: "auto under the deploy role", protocol: ""},
		{name: "auto falls back to spdy where the role grants only create", protocol: "", execVerbs: []string{"create"}},
		{name: "spdy", protocol: "spdy"},
		{name: "websocket", protocol: "websocket"},
		{name: "an SSE-KMS snapshot and its SSE-KMS backup", protocol: "",
			env: map[string]string{"S3_SSE": "aws:kms", "S3_SSE_KMS_KEY_ID": s3test.KMSKeyID}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorldWithExec(t, nil, tc.execVerbs, map[string]string{"RESTORE_EXEC_PROTOCOL": tc.protocol}, tc.env)
			restoreJob(t, w)
		})
	}
}

func restoreJob(t *testing.T, w *world) {
	writeTree(t, w.pod.Dir, homeBefore)
	before := fileState(t, w.pod.Dir)
	src := snapshotDir(t)
	snap := w.storeSnapshot(t, src)
	w.assertEncrypted(t, homesnap.ArchiveKey(w.user, w.session, snap))
	id, e := w.request(t, snap)

	require.Equal(t, 2, w.deliver(t, e)/100, "the delivery is answered when the job is done")
	row := w.job(t, snap, id)
	assert.Equal(t, "completed", row.Status, row.Error)
	assert.Equal(t, "available", row.SnapshotStatus)
	assert.Equal(t, function.Progress{Phase: function.PhaseCompleted, Step: 6, Steps: 6, Percent: 100}, row.Progress)
	assert.False(t, row.RolledBack)
	assert.False(t, row.RollbackFailed)

	// /config is the snapshot, owned by the session's user.
	assert.Equal(t, contentState(t, src), contentState(t, w.pod.Dir))
	for path, v := range fileState(t, w.pod.Dir) {
		if !strings.HasPrefix(v, "link") {
			assert.Contains(t, v, " 4242:4242", path)
		}
	}

	// The job's row records its end and its backup.
	require.NotEmpty(t, row.Backup)
	assert.Equal(t, jobState{Phase: string(function.PhaseCompleted), Backup: row.Backup}, stateOf(t, w.h, id))

	// The pre-restore backup is a snapshot of the session like any other:
	// its metadata is the archive record a snapshot has, and the id of the
	// job that took it. It holds /config as it was.
	var (
		typ, status, path string
		meta              map[string]json.RawMessage
	)
	require.NoError(t, w.h.Pool.QueryRow(context.Background(),
		`select type, status, storage_path, metadata from session_snapshots where id = $1`,
		row.Backup).Scan(&typ, &status, &path, &meta))
	assert.Equal(t, "pre-restore", typ)
	assert.Equal(t, "available", status)
	assert.ElementsMatch(t, []string{"restoreJobId", "archive"}, slices.Collect(maps.Keys(meta)))
	assert.JSONEq(t, strconv.Quote(id), string(meta["restoreJobId"]))
	var rec struct {
		Manifest, ETag, SHA256 string
		Entries                int64
	}
	require.NoError(t, json.Unmarshal(meta["archive"], &rec))
	assert.Equal(t, homesnap.ManifestKey(path), rec.Manifest)
	assert.NotEmpty(t, rec.ETag)
	assert.Len(t, rec.SHA256, 64)
	assert.Positive(t, rec.Entries)
	w.assertEncrypted(t, path)
	w.assertEncrypted(t, homesnap.ManifestKey(path))
	obj, err := w.s3.Client().GetObject(context.Background(), &s3.GetObjectInput{Bucket: aws.String(w.bucket), Key: aws.String(path)})
	require.NoError(t, err)
	restoreDir := t.TempDir()
	cmd := exec.Command("tar", "-xzf", "-", "-C", restoreDir)
	cmd.Stdin = obj.Body
	require.NoError(t, cmd.Run())
	assert.Equal(t, before, fileState(t, restoreDir), "the backup holds /config as it was")

	var done events.RestoreCompletedData
	waitEvent(t, w.h, events.RestoreCompleted, id, &done)
	tarred, err := exec.Command("tar", "-czf", "-", "-C", src, ".").Output()
	require.NoError(t, err)
	entries, _ := countEntries(t, tarred)
	assert.Equal(t, entries-1, done.FileCount, "every entry but the root")
	for _, phase := range []function.Phase{function.PhaseVetting, function.PhaseBackingUp, function.PhaseClearing,
		function.PhaseExtracting, function.PhaseVerifying} {
		assert.True(t, hasProgress(w, id, phase), "a progress event for %s", phase)
	}

	// A redelivery after the end changes nothing.
	assert.Equal(t, 2, w.deliver(t, e)/100)
	assert.Equal(t, 1, w.h.Count(`select count(*) from session_snapshots where type = 'pre-restore'`))
	scrape := w.h.Scrape()
	assert.Equal(t, 1.0, scrape.Value("streamspace_functions_jobs_finished_total", map[string]string{"function": "restore", "job": "restore", "outcome": "succeeded"}))
	assert.Equal(t, 0.0, scrape.Value("streamspace_functions_jobs_active", map[string]string{"function": "restore", "job": "restore"}))
}

// hasProgress says whether a progress event for phase of job reached the
// sink.
func hasProgress(w *world, job string, phase function.Phase) bool {
	for _, e := range w.h.Sink.Events() {
		var d events.RestoreProgressData
		if e.Type() == events.RestoreProgress && e.DataAs(&d) == nil && d.RestoreJobID == job && d.Phase == string(phase) {
			return true
		}
	}
	return false
}
