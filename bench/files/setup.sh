#!/bin/bash
# bench/files/setup.sh: sourced by rss-run.sh and cpu-run.sh (see bench/FILES.md).
# Builds crates/megaconn/examples/serve_files.rs (a ServeDir app that takes its
# read size, CHUNK, as its fourth argument) into $WORK/bin/megaconn, and, with
# MEGACONN_REF=<commit>, the same example at that commit (which must have the
# CHUNK argument: fa678ef or later) into $WORK/bin/ref; makes the served
# directory ($WORK/www: big50.bin, and big1g.bin when BIG1G=1) and nginx's
# config serving it (ports $NGINX_PORT HTTP/1.1, $NGINX_H2_PORT h2c).
# Env: WORK (/tmp/megaconn-files), SERVE_FILES (a built example: no build),
# MEGACONN_REF, NGINX (/usr/sbin/nginx), NGINX_PORT (8402), NGINX_H2_PORT
# (8403), SIDES (the servers besides nginx, executables in $WORK/bin, each
# started as `$WORK/bin/SIDE LISTEN ROOT UPLOADS CHUNK`: "megaconn", and
# "ref" with MEGACONN_REF). Extra cargo flags: CARGO_BUILD_FLAGS.
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
WORK=${WORK:-/tmp/megaconn-files}
NGINX=${NGINX:-/usr/sbin/nginx}
NGINX_PORT=${NGINX_PORT:-8402}
NGINX_H2_PORT=${NGINX_H2_PORT:-8403}
mkdir -p "$WORK"/{bin,www,up,nginx/logs,nginx/body,nginx/tmp}

# build DIR NAME: the example built in checkout DIR, copied to $WORK/bin/NAME.
build() {
  local target=${CARGO_TARGET_DIR:-$1/target}
  echo "building serve_files in $1" >&2
  (cd "$1" && cargo build --release --locked $CARGO_BUILD_FLAGS -p megaconn --example serve_files) >&2 || exit 1
  cp "$target/release/examples/serve_files" "$WORK/bin/$2"
}
if [ -n "$MEGACONN_REF" ]; then
  # Built first: the two builds share the target directory's file name.
  ref_dir="$WORK/ref-checkout"
  git -C "$REPO" worktree remove --force "$ref_dir" 2>/dev/null
  git -C "$REPO" worktree add -q --detach "$ref_dir" "$MEGACONN_REF" || exit 1
  CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target} build "$ref_dir" ref
  git -C "$REPO" worktree remove --force "$ref_dir"
fi
if [ -n "$SERVE_FILES" ]; then
  cp "$SERVE_FILES" "$WORK/bin/megaconn"
else
  build "$REPO" megaconn
fi
SIDES=${SIDES:-megaconn${MEGACONN_REF:+ ref}}

[ -s "$WORK/www/big50.bin" ] || head -c 50000000 /dev/urandom > "$WORK/www/big50.bin"
[ "$BIG1G" = 1 ] && { [ -s "$WORK/www/big1g.bin" ] || head -c 1073741824 /dev/zero > "$WORK/www/big1g.bin"; }
echo hello world > "$WORK/www/index.html"
mime=""; [ -e /etc/nginx/mime.types ] && mime="include /etc/nginx/mime.types;"
cat > "$WORK/nginx/nginx.conf" <<CONF
# Written by bench/files/setup.sh: nginx serving what the megaconn example serves.
daemon off;
master_process on;
worker_processes 2;
worker_rlimit_nofile 20000;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 10000; }
http {
    $mime
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    access_log $WORK/nginx/logs/access.log;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/tmp;
    fastcgi_temp_path $WORK/nginx/tmp;
    uwsgi_temp_path $WORK/nginx/tmp;
    scgi_temp_path $WORK/nginx/tmp;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        listen 127.0.0.1:$NGINX_H2_PORT http2;
        location /files/ { alias $WORK/www/; gzip_static on; }
        location /upload/ { alias $WORK/up/; dav_methods PUT; client_max_body_size 4g; }
    }
}
CONF

# start_side SIDE PORT CHUNK LOG: one megaconn side, in the background ($!).
start_side() {
  RUST_LOG=${RUST_LOG:-warn} "$WORK/bin/$1" "127.0.0.1:$2" "$WORK/www" "$WORK/up" "$3" > "$4" 2>&1 &
}
