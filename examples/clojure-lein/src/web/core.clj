(ns web.core
  "A web app on the JDK's own HTTP server: no dependencies beyond Clojure."
  (:gen-class)
  (:require [clojure.string :as string])
  (:import (com.sun.net.httpserver HttpServer HttpHandler)
           (java.net InetSocketAddress)))

(defn- version []
  (or (not-empty (System/getenv "VERSION"))
      (try (string/trim (slurp "VERSION")) (catch Exception _ "unknown"))))

(defn -main [& _]
  (let [host (or (System/getenv "BIND_ADDRESS") "127.0.0.1")
        port (Integer/parseInt (or (System/getenv "PORT") "5000"))
        server (HttpServer/create (InetSocketAddress. host port) 64)]
    (.createContext server "/"
                    (reify HttpHandler
                      (handle [_ exchange]
                        (let [body (.getBytes (str "hello from " (System/getenv "APP")
                                                   " clojure " (version) "\n") "UTF-8")]
                          (.sendResponseHeaders exchange 200 (alength body))
                          (with-open [out (.getResponseBody exchange)]
                            (.write out body))))))
    (.start server)
    (println "listening on" (str host ":" port))))
