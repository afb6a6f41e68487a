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
# oneDNN (Debian libdnnl-dev, built on OpenMP: the same libgomp pool as ours and OpenBLAS'): the
# matmul primitive behind Linear. Found by path: Debian's dnnl-config.cmake insists on OpenCL headers
# for its GPU runtime, which tokenmix does not use.
find_path(TOKENMIX_DNNL_INCLUDE oneapi/dnnl/dnnl.hpp REQUIRED)
find_library(TOKENMIX_DNNL NAMES dnnl REQUIRED)
if(NOT TARGET tokenmix_dnnl)
  add_library(tokenmix_dnnl INTERFACE IMPORTED)
  target_include_directories(tokenmix_dnnl INTERFACE ${TOKENMIX_DNNL_INCLUDE})
  target_link_libraries(tokenmix_dnnl INTERFACE ${TOKENMIX_DNNL})
endif()
