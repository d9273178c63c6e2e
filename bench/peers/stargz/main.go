// Command containerd-stargz-grpc (skiff-bench's peer build) is a small daemon that
// exposes the stargz-snapshotter library shipped by Debian 12
// (golang-github-containerd-stargz-snapshotter-dev 0.12.0) as a containerd
// remote ("proxy_plugins") snapshotter over gRPC on a unix socket.
//
// It is written against the library's lower-level packages (fs, fs/source,
// snapshot) rather than the library's service / service/resolver packages,
// because those import k8s.io/cri-api, which Debian does not package.
// Registry access is anonymous (no keychains, no CRI label sources).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/contrib/snapshotservice"
	"github.com/containerd/containerd/log"
	"github.com/containerd/containerd/reference"
	"github.com/containerd/containerd/remotes/docker"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/overlay/overlayutils"
	stargzfs "github.com/containerd/stargz-snapshotter/fs"
	fsconfig "github.com/containerd/stargz-snapshotter/fs/config"
	"github.com/containerd/stargz-snapshotter/fs/layer"
	"github.com/containerd/stargz-snapshotter/fs/source"
	snbase "github.com/containerd/stargz-snapshotter/snapshot"
	rhttp "github.com/hashicorp/go-retryablehttp"
	toml "github.com/pelletier/go-toml"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
)

const (
	defaultAddress = "/run/containerd-stargz-grpc/containerd-stargz-grpc.sock"
	defaultRoot    = "/var/lib/containerd-stargz-grpc"
	defaultConfig  = "/etc/containerd-stargz-grpc/config.toml"

	defaultRegistryTimeout = 30 * time.Second
)

// Config mirrors the layout of upstream's config.toml: the filesystem
// options at top level (fs/config.Config) plus a [resolver] section.
// Unknown sections (e.g. kubeconfig_keychain, cri_keychain) are ignored.
type Config struct {
	fsconfig.Config
	Resolver ResolverConfig `toml:"resolver"`
}

// ResolverConfig: [[resolver.host."NAME".mirrors]] entries.
type ResolverConfig struct {
	Host map[string]HostConfig `toml:"host"`
}

type HostConfig struct {
	Mirrors []MirrorConfig `toml:"mirrors"`
}

type MirrorConfig struct {
	Host              string `toml:"host"`                // host[:port] of the mirror
	Insecure          bool   `toml:"insecure"`            // plain http instead of https
	RequestTimeoutSec int    `toml:"request_timeout_sec"` // 0: default (30s); <0: none
}

func main() {
	address := flag.String("address", defaultAddress, "unix socket to serve the containerd snapshots gRPC API on")
	root := flag.String("root", defaultRoot, "state directory (snapshots, FUSE mountpoints, caches)")
	configPath := flag.String("config", defaultConfig, "TOML config file; a missing file at the default path means built-in defaults")
	logLevel := flag.String("log-level", "info", "log level: trace, debug, info, warn, error")
	flag.Parse()

	if err := run(*address, *root, *configPath, *logLevel); err != nil {
		fmt.Fprintf(os.Stderr, "containerd-stargz-grpc: %v\n", err)
		os.Exit(1)
	}
}

func loadConfig(path string, mustExist bool) (*Config, error) {
	cfg := &Config{}
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) && !mustExist {
			return cfg, nil
		}
		return nil, fmt.Errorf("reading config %q: %w", path, err)
	}
	if err := toml.Unmarshal(data, cfg); err != nil {
		return nil, fmt.Errorf("parsing config %q: %w", path, err)
	}
	return cfg, nil
}

// registryHosts turns the resolver config into the per-reference list of
// registry endpoints the stargz filesystem tries: configured mirrors first,
// then the reference's own host. localhost/127.0.0.1 (any port) and mirrors
// marked insecure use http.
func registryHosts(rc ResolverConfig) source.RegistryHosts {
	return func(ref reference.Spec) ([]docker.RegistryHost, error) {
		name := ref.Hostname()
		endpoints := append([]MirrorConfig{}, rc.Host[name].Mirrors...)
		endpoints = append(endpoints, MirrorConfig{Host: name})

		var out []docker.RegistryHost
		for _, ep := range endpoints {
			rc := rhttp.NewClient()
			rc.Logger = nil
			client := rc.StandardClient()
			switch {
			case ep.RequestTimeoutSec == 0:
				client.Timeout = defaultRegistryTimeout
			case ep.RequestTimeoutSec > 0:
				client.Timeout = time.Duration(ep.RequestTimeoutSec) * time.Second
			}
			scheme := "https"
			if isLocal, _ := docker.MatchLocalhost(ep.Host); isLocal || ep.Insecure {
				scheme = "http"
			}
			host := ep.Host
			if host == "docker.io" {
				host = "registry-1.docker.io"
			}
			out = append(out, docker.RegistryHost{
				Client:       client,
				Authorizer:   docker.NewDockerAuthorizer(docker.WithAuthClient(client)),
				Host:         host,
				Scheme:       scheme,
				Path:         "/v2",
				Capabilities: docker.HostCapabilityPull | docker.HostCapabilityResolve,
			})
		}
		return out, nil
	}
}

func newSnapshotter(ctx context.Context, root string, cfg *Config) (snapshots.Snapshotter, error) {
	snRoot := filepath.Join(root, "snapshotter") // overlay-style snapshot dirs + metadata.db
	fsRoot := filepath.Join(root, "stargz")      // layer caches

	if err := os.MkdirAll(snRoot, 0700); err != nil {
		return nil, err
	}
	if err := overlayutils.Supported(snRoot); err != nil {
		return nil, fmt.Errorf("overlayfs not usable under %q: %w", snRoot, err)
	}
	opaque := layer.OverlayOpaqueTrusted
	if userx, err := overlayutils.NeedsUserXAttr(snRoot); err != nil {
		log.G(ctx).WithError(err).Warn("cannot detect whether overlay needs userxattr; assuming trusted.* xattrs")
	} else if userx {
		opaque = layer.OverlayOpaqueUser
	}

	fs, err := stargzfs.NewFilesystem(fsRoot, cfg.Config,
		stargzfs.WithGetSources(source.FromDefaultLabels(registryHosts(cfg.Resolver))),
		stargzfs.WithOverlayOpaqueType(opaque),
	)
	if err != nil {
		return nil, fmt.Errorf("creating stargz filesystem: %w", err)
	}
	return snbase.NewSnapshotter(ctx, snRoot, fs, snbase.AsynchronousRemove)
}

func run(address, root, configPath, logLevel string) error {
	lvl, err := logrus.ParseLevel(logLevel)
	if err != nil {
		return fmt.Errorf("bad --log-level: %w", err)
	}
	logrus.SetLevel(lvl)
	logrus.SetFormatter(&logrus.TextFormatter{FullTimestamp: true})
	ctx := log.WithLogger(context.Background(), log.L)

	configGiven := false
	flag.Visit(func(f *flag.Flag) { configGiven = configGiven || f.Name == "config" })
	cfg, err := loadConfig(configPath, configGiven)
	if err != nil {
		return err
	}

	sn, err := newSnapshotter(ctx, root, cfg)
	if err != nil {
		return err
	}
	// Close unmounts every FUSE layer mount and removes the snapshot
	// directories under ROOT/snapshotter/snapshots.
	closeSn := func() {
		if err := sn.Close(); err != nil {
			log.G(ctx).WithError(err).Warn("closing snapshotter")
		}
	}

	if err := os.MkdirAll(filepath.Dir(address), 0700); err != nil {
		closeSn()
		return fmt.Errorf("creating socket directory: %w", err)
	}
	if err := os.Remove(address); err != nil && !errors.Is(err, os.ErrNotExist) {
		closeSn()
		return fmt.Errorf("removing stale socket %q: %w", address, err)
	}
	lis, err := net.Listen("unix", address)
	if err != nil {
		closeSn()
		return fmt.Errorf("listening on %q: %w", address, err)
	}

	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	log.G(ctx).WithField("address", address).WithField("root", root).Info("stargz snapshotter serving")

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	var result error
	select {
	case s := <-sigs:
		log.G(ctx).Infof("received %v; shutting down", s)
	case err := <-served:
		result = fmt.Errorf("grpc server exited: %w", err)
	}
	srv.Stop()
	closeSn()
	if err := os.Remove(address); err != nil && !errors.Is(err, os.ErrNotExist) {
		log.G(ctx).WithError(err).Warn("removing socket")
	}
	log.G(ctx).Info("stopped")
	return result
}
