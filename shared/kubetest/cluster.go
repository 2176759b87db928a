// Package kubetest runs a real Kubernetes API server for tests: etcd and
// kube-apiserver built by scripts/tools, one pair per test binary, started
// on first use. There is no kubelet, scheduler or controller-manager:
// Deployments get no pods, and a test creates the Pods it needs with Kubelet,
// which also serves the kubelet's real pods/exec streaming protocol.
package kubetest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/streamspace-dev/functions/shared/testbin"
)

// adminToken is the API server's static token for the tests' admin, a
// member of system:masters.
const adminToken = "kubetest-admin-token"

// Cluster is a running API server.
type Cluster struct {
	// Config reaches the API server as a cluster admin.
	Config *rest.Config
	// Client is a clientset for Config.
	Client kubernetes.Interface

	etcd, apiserver *testbin.Process
	names           atomic.Int64
}

var (
	once     sync.Once
	shared   *Cluster
	startErr error
)

// Start returns the test binary's API server, starting it on first use.
func Start(tb testing.TB) *Cluster {
	tb.Helper()
	etcd := testbin.Path(tb, "etcd")
	apiserver := testbin.Path(tb, "kube-apiserver")
	once.Do(func() { shared, startErr = start(etcd, apiserver) })
	if startErr != nil {
		tb.Fatal(startErr)
	}
	if shared.apiserver.Exited() {
		tb.Fatalf("kubetest: kube-apiserver has exited:\n%s", shared.apiserver.Output())
	}
	return shared
}

// Run starts an etcd and a kube-apiserver of its own, outside a test: the
// local runner (make run) scales a demo Deployment on it. Stop ends them.
func Run() (*Cluster, error) {
	etcd, err := testbin.Lookup("etcd")
	if err != nil {
		return nil, err
	}
	apiserver, err := testbin.Lookup("kube-apiserver")
	if err != nil {
		return nil, err
	}
	return start(etcd, apiserver)
}

// Stop ends a Cluster that Run started.
func (c *Cluster) Stop() {
	c.apiserver.Stop()
	c.etcd.Stop()
}

func start(etcdPath, apiserverPath string) (*Cluster, error) {
	dir, err := testbin.TempDir("kubetest")
	if err != nil {
		return nil, err
	}
	ports := make([]int, 3)
	for i := range ports {
		if ports[i], err = testbin.FreePort(); err != nil {
			return nil, err
		}
	}
	client := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	peer := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	c := &Cluster{}
	c.etcd, err = testbin.Start(etcdPath, []string{
		"--name", "kubetest", "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "kubetest=" + peer,
		"--unsafe-no-fsync", "--log-level", "error",
	})
	if err != nil {
		return nil, err
	}
	keyFile := filepath.Join(dir, "sa.key")
	if err := writeServiceAccountKey(keyFile); err != nil {
		return nil, err
	}
	tokens := filepath.Join(dir, "tokens.csv")
	if err := os.WriteFile(tokens, []byte(adminToken+",kubetest-admin,kubetest-admin,system:masters\n"), 0o600); err != nil {
		return nil, err
	}
	certDir := filepath.Join(dir, "certs")
	c.apiserver, err = testbin.Start(apiserverPath, []string{
		"--etcd-servers", client,
		"--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
		"--secure-port", fmt.Sprint(ports[2]), "--cert-dir", certDir,
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", keyFile, "--service-account-signing-key-file", keyFile,
		"--token-auth-file", tokens, "--authorization-mode", "RBAC",
		"--service-cluster-ip-range", "10.96.0.0/16",
		// No controller-manager creates the default ServiceAccounts, so
		// Pods are admitted without one.
		"--disable-admission-plugins", "ServiceAccount",
		"--logging-format", "text", "-v", "0",
	})
	if err != nil {
		c.etcd.Stop()
		return nil, err
	}
	c.Config = &rest.Config{
		Host:            fmt.Sprintf("https://127.0.0.1:%d", ports[2]),
		BearerToken:     adminToken,
		TLSClientConfig: rest.TLSClientConfig{Insecure: true},
		QPS:             -1,
	}
	if c.Client, err = kubernetes.NewForConfig(c.Config); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err = c.apiserver.WaitReady(ctx, func(ctx context.Context) error {
		body, err := c.Client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil {
			return fmt.Errorf("%v: %s", err, body)
		}
		// The default namespace appears once the API server's own
		// controllers have run; a test's first create would race it.
		_, err = c.Client.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{})
		return err
	})
	if err != nil {
		c.apiserver.Stop()
		c.etcd.Stop()
		return nil, err
	}
	return c, nil
}

func writeServiceAccountKey(path string) error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

// Name returns a name no other test of this binary uses, for objects that
// must not collide: prefix-N.
func (c *Cluster) Name(prefix string) string {
	return fmt.Sprintf("%s-%d", prefix, c.names.Add(1))
}

// Namespace creates a fresh namespace for one test. It is not deleted:
// without a controller-manager a deleted namespace stays Terminating, and
// the API server dies with the test binary.
func (c *Cluster) Namespace(tb testing.TB) string {
	tb.Helper()
	// A DNS-1123 label: lower-case letters, digits and '-'; a test name
	// may hold anything else (spaces became '_', commas, quotes).
	base := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			return r
		default:
			return '-'
		}
	}, strings.ToLower(tb.Name()))
	if len(base) > 40 {
		base = base[:40]
	}
	name := c.Name(strings.Trim(base, "-"))
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if _, err := c.Client.CoreV1().Namespaces().Create(context.Background(), ns, metav1.CreateOptions{}); err != nil {
		tb.Fatalf("kubetest: create namespace %s: %v", name, err)
	}
	return name
}

// ServiceAccountConfig reaches the API server as the ServiceAccount
// namespace/name, by impersonation, so the Roles a test binds to it are
// what authorizes its requests. The ServiceAccount itself need not exist.
func (c *Cluster) ServiceAccountConfig(namespace, name string) *rest.Config {
	cfg := rest.CopyConfig(c.Config)
	cfg.Impersonate = rest.ImpersonationConfig{
		UserName: "system:serviceaccount:" + namespace + ":" + name,
		Groups:   []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace, "system:authenticated"},
	}
	return cfg
}
