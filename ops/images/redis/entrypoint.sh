#!/bin/sh
# The official image builds redis with protected mode off, so that clients on the container
# network can connect without a password; Debian's build has it on, so turn it off here.
if [ "$1" = redis-server ]; then
  shift
  exec redis-server "$@" --protected-mode no
fi
exec "$@"
