;; Clojure itself comes from Debian's packaged Maven repository (/usr/share/maven-repo,
;; filled by the libclojure-java package), not Clojars or Maven Central: the test machines
;; cannot reach them. Drop :repositories to build against Clojars and Central as usual.
;; Debian's repository has no checksum files, hence :checksum :ignore.
(defproject clojure-lein "0.1.0"
  :description "A web app on the JDK's HTTP server, built with Leiningen"
  :dependencies [[org.clojure/clojure "1.11.1"]]
  :main web.core
  :aot [web.core]
  :uberjar-name "app-standalone.jar"
  :repositories ^:replace [["debian" {:url "file:///usr/share/maven-repo"
                                      :checksum :ignore
                                      :snapshots false}]])
