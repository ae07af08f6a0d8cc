// docker buildx bake -f cross/docker-bake.hcl : the .deb for arm64 (Pi, Jetson) and amd64.
group "default" {
  targets = ["deb"]
}

target "deb" {
  context    = "."
  dockerfile = "cross/Dockerfile"
  target     = "artifact"
  platforms  = ["linux/arm64", "linux/amd64"]
  output     = ["type=local,dest=build/deb"]
}
