# Dependencies of the tokenmix library, shared by the build and the installed package config.
# OpenBLAS: prefer Debian's OpenMP build (libopenblas-openmp-dev), whose GEMMs run single-threaded
# inside our OpenMP regions instead of oversubscribing the cores.
find_package(OpenMP REQUIRED)
find_package(nlohmann_json 3 REQUIRED)
find_path(TOKENMIX_CBLAS_INCLUDE cblas.h PATH_SUFFIXES openblas REQUIRED)
find_library(TOKENMIX_OPENBLAS NAMES openblas
  PATHS /usr/lib/x86_64-linux-gnu/openblas-openmp /usr/lib/aarch64-linux-gnu/openblas-openmp
  NO_DEFAULT_PATH)
find_library(TOKENMIX_OPENBLAS NAMES openblas REQUIRED)
if(NOT TARGET tokenmix_blas)
  add_library(tokenmix_blas INTERFACE IMPORTED)
  target_include_directories(tokenmix_blas INTERFACE ${TOKENMIX_CBLAS_INCLUDE})
  target_link_libraries(tokenmix_blas INTERFACE ${TOKENMIX_OPENBLAS})
endif()
